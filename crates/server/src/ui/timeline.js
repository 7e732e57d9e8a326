// Notes on answers: each form posts {text, tag} as JSON and reloads the page to show the note in place.
for (const form of document.querySelectorAll("form.note-form")) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const resp = await fetch(`/api/answers/${form.dataset.answer}/notes`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ text: data.get("text"), tag: data.get("tag") || null }),
    });
    if (resp.ok) {
      location.reload();
    } else {
      const err = await resp.json().catch(() => ({}));
      alert((err.error && err.error.message) || `saving the note failed (${resp.status})`);
    }
  });
}
