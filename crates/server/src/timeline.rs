//! The watch timeline, rendered on the server from the store: `/runs` (every watched run), `/runs/{run}` (prompts ×
//! checkpoints as a heat map of change scores, with each prompt's answer length as a small line) and
//! `/runs/{run}/prompts/{id}` (every checkpoint's answer in order with a word diff against the previous one, its
//! sampling parameters, notes, and links into the chat). Model output only ever reaches the page as escaped text.
//! Notes are added through `POST /api/answers/{id}/notes`; `/api/runs/{run}/timeline` gives the same data as JSON.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use vibecheck_suite::diff::{word_diff, Piece};
use vibecheck_suite::timeline::{timeline, Timeline, TimelineError};

use crate::page::{esc, page_with_script, seg, with_store};
use crate::{ApiError, AppState};

fn page(title: &str, body: &str) -> Response {
    page_with_script(title, body, "/ui/timeline.js")
}

fn timeline_error(e: TimelineError) -> ApiError {
    match e {
        TimelineError::NotFound(m) => ApiError::not_found(m),
        TimelineError::Store(e) => ApiError::internal(e.to_string()),
    }
}

pub async fn runs_page(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rows = with_store(&state, move |store| {
        let mut rows = Vec::new();
        for run in store
            .runs()
            .map_err(|e| ApiError::internal(e.to_string()))?
        {
            let checkpoints = store
                .checkpoints(run.id)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let answers = store
                .answers(run.id, None, None)
                .map_err(|e| ApiError::internal(e.to_string()))?
                .len();
            rows.push((run, checkpoints.len(), answers));
        }
        Ok(rows)
    })
    .await?;
    let mut body = String::from("<h1>Watched runs</h1>");
    if rows.is_empty() {
        body.push_str("<p class=\"muted\">No run yet. Start one with <code>vibecheck watch RUN_DIR --serve</code>.</p>");
    } else {
        body.push_str("<table class=\"list\"><tr><th>run</th><th>folder</th><th>checkpoints</th><th>answers</th></tr>");
        for (run, checkpoints, answers) in rows {
            body.push_str(&format!(
                "<tr><td><a href=\"/runs/{}\">{}</a>{}</td><td class=\"muted\">{}</td><td>{checkpoints}</td><td>{answers}</td></tr>",
                seg(&run.name),
                esc(&run.name),
                if run.synthetic { " <span class=\"badge\">synthetic</span>" } else { "" },
                esc(&run.path)
            ));
        }
        body.push_str("</table>");
    }
    Ok(page("runs", &body))
}

#[derive(Deserialize, Default)]
pub struct TimelineQuery {
    suite: Option<String>,
    sample: Option<u32>,
}

async fn load_timeline(
    state: AppState,
    run: String,
    q: TimelineQuery,
) -> Result<Timeline, ApiError> {
    with_store(&state, move |store| {
        timeline(store, &run, q.suite.as_deref(), q.sample.unwrap_or(0)).map_err(timeline_error)
    })
    .await
}

pub async fn timeline_json(
    State(state): State<AppState>,
    Path(run): Path<String>,
    Query(q): Query<TimelineQuery>,
) -> Result<Response, ApiError> {
    Ok(Json(load_timeline(state, run, q).await?).into_response())
}

/// A small line of the answer length per checkpoint.
fn sparkline(values: &[Option<usize>]) -> String {
    let max = values.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let n = values.len().max(2) as f64 - 1.0;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            v.map(|v| {
                format!(
                    "{:.1},{:.1}",
                    i as f64 / n * 96.0 + 2.0,
                    22.0 - v as f64 / max * 20.0
                )
            })
        })
        .collect();
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 100 24\" width=\"100\" height=\"24\" role=\"img\"><title>words per answer: {}</title>\
         <polyline points=\"{}\" fill=\"none\" stroke=\"currentColor\" stroke-width=\"1.5\"/></svg>",
        values
            .iter()
            .map(|v| v.map_or("–".to_string(), |v| v.to_string()))
            .collect::<Vec<_>>()
            .join(" → "),
        points.join(" ")
    )
}

/// Checkpoints that could not be loaded, each with its reason: a run whose later checkpoints fail must not look
/// like a run that stopped.
fn failed_checkpoints(t: &Timeline) -> String {
    if t.failed.is_empty() {
        return String::new();
    }
    let items: String = t
        .failed
        .iter()
        .map(|c| {
            format!(
                "<li><b>{}</b>: {}</li>",
                esc(&c.name),
                esc(c.load_error.as_deref().unwrap_or(""))
            )
        })
        .collect();
    format!(
        "<div class=\"banner failed\"><p>{} checkpoint{} could not be loaded (retried when {} files change):</p><ul>{items}</ul></div>",
        t.failed.len(),
        if t.failed.len() == 1 { "" } else { "s" },
        if t.failed.len() == 1 { "its" } else { "their" }
    )
}

fn synthetic_banner(t: &Timeline) -> &'static str {
    if t.run.synthetic {
        "<p class=\"banner\">This run is synthetic: the vibecheck demo mixes SmolLM2-135M-Instruct's weights with \
         noise (step 0 all noise, the last step the real model). Nothing was trained.</p>"
    } else {
        ""
    }
}

fn suite_picker(t: &Timeline, base: &str) -> String {
    if t.suites.len() < 2 {
        return format!(
            "<p class=\"muted\">suite {} · version {}</p>",
            esc(&t.suite.name),
            esc(&t.suite.hash[..12])
        );
    }
    let links: Vec<String> = t
        .suites
        .iter()
        .map(|s| {
            let cls = if s.hash == t.suite.hash {
                " class=\"current\""
            } else {
                ""
            };
            format!(
                "<a{cls} href=\"{base}?suite={}\">{} {}</a>",
                &s.hash[..12],
                esc(&s.name),
                &s.hash[..12]
            )
        })
        .collect();
    format!(
        "<p class=\"muted\">suite versions: {}</p>",
        links.join(" · ")
    )
}

pub async fn run_page(
    State(state): State<AppState>,
    Path(run): Path<String>,
    Query(q): Query<TimelineQuery>,
) -> Result<Response, ApiError> {
    let st = state.clone();
    let t = load_timeline(state, run, q).await?;
    let base = format!("/runs/{}", seg(&t.run.name));
    let suite_q = format!("?suite={}&amp;sample={}", &t.suite.hash[..12], t.sample);
    let mut body = format!(
        "<h1>{}</h1>{}{}<p class=\"muted\">Each cell: how much the answer changed since the previous checkpoint \
         (word edit distance over the longer answer; white = unchanged, dark = rewritten, ○ = first answer).</p>",
        esc(&t.run.name),
        synthetic_banner(&t),
        suite_picker(&t, &base)
    );
    body.push_str(&failed_checkpoints(&t));
    body.push_str("<table class=\"heat\"><thead><tr><th>prompt</th>");
    // Columns by step: answered checkpoints, and greyed ones that could not be loaded (the reason on hover), so a
    // run whose later checkpoints fail does not look like a run that stopped.
    let answered: std::collections::HashSet<i64> = t.checkpoints.iter().map(|c| c.id).collect();
    let mut columns: Vec<(Option<u64>, Option<usize>, &vibecheck_store::Checkpoint)> = t
        .checkpoints
        .iter()
        .enumerate()
        .map(|(i, c)| (c.step.map(|s| s as u64), Some(i), c))
        .chain(
            t.failed
                .iter()
                .filter(|c| !answered.contains(&c.id))
                .map(|c| (c.step.map(|s| s as u64), None, c)),
        )
        .collect();
    columns.sort_by_key(|(step, _, c)| (*step, c.id));
    for (_, answered, c) in &columns {
        let label = c.step.map_or_else(|| esc(&c.name), |s| s.to_string());
        match answered {
            Some(_) => body.push_str(&format!("<th title=\"{}\">{label}</th>", esc(&c.name))),
            None => body.push_str(&format!(
                "<th class=\"failed\" title=\"{}: could not be loaded: {}\">{label}</th>",
                esc(&c.name),
                esc(c.load_error.as_deref().unwrap_or(""))
            )),
        }
    }
    body.push_str("<th>length</th></tr></thead><tbody>");
    for p in &t.prompts {
        let link = format!("{base}/prompts/{}{suite_q}", seg(&p.id));
        body.push_str(&format!(
            "<tr><th class=\"prompt\"><a href=\"{link}\" title=\"{}\">{}</a></th>",
            esc(&p.turns.join(" / ")),
            esc(&p.id)
        ));
        for (_, answered, failed) in &columns {
            let Some(i) = *answered else {
                body.push_str(&format!(
                    "<td class=\"failed\" title=\"{}: could not be loaded: {}\">✕</td>",
                    esc(&failed.name),
                    esc(failed.load_error.as_deref().unwrap_or(""))
                ));
                continue;
            };
            let cell = &p.cells[i];
            match cell {
                None => body.push_str("<td class=\"none\">·</td>"),
                Some(c) => {
                    let (class, label) = match c.change {
                        None => ("h-first".to_string(), "○".to_string()),
                        Some(x) => (format!("h{}", (x * 10.0).round() as u32), format!("{x:.2}")),
                    };
                    body.push_str(&format!(
                        "<td class=\"{class}\"><a href=\"{link}#c{}\" title=\"{} · {} words · change {label}\">{label}</a></td>",
                        t.checkpoints[i].id,
                        esc(&t.checkpoints[i].name),
                        c.words
                    ));
                }
            }
        }
        let lengths: Vec<Option<usize>> = p
            .cells
            .iter()
            .map(|c| c.as_ref().map(|c| c.words))
            .collect();
        body.push_str(&format!("<td>{}</td></tr>", sparkline(&lengths)));
    }
    body.push_str("</tbody></table>");
    body.push_str(&judge_section(&st, &t).await?);
    let names: Vec<String> = t.checkpoints.iter().map(|c| c.name.clone()).collect();
    body.push_str(&crate::cost::run_section(&st, &t.run.name, &names).await);
    Ok(page(&t.run.name, &body))
}

/// `{"temperature":0,"max_tokens":64,"seed":null}` as `temperature 0 · max_tokens 64` (greedy when temperature is 0).
fn params_text(json: &str) -> String {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(json) else {
        return json.to_string();
    };
    let greedy = m.get("temperature").and_then(|t| t.as_f64()) == Some(0.0);
    let mut parts: Vec<String> = vec![if greedy {
        "greedy".into()
    } else {
        "sampled".into()
    }];
    for (k, v) in &m {
        if v.is_null()
            || k == "seed"
            || (greedy && matches!(k.as_str(), "temperature" | "top_p" | "top_k" | "min_p"))
        {
            continue;
        }
        parts.push(format!("{k} {v}"));
    }
    parts.join(", ")
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.0}%", x * 100.0)
    } else {
        "–".into()
    }
}

/// Judge results, charts over steps, and where this run's suites were sent.
async fn judge_section(state: &AppState, t: &Timeline) -> Result<String, ApiError> {
    let (st, run) = (state.clone(), t.run.name.clone());
    let (summary, arena, sends) = with_store(&st, move |store| {
        let summary = vibecheck_judge::summarize(store, &run, None)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let arena = vibecheck_judge::arena::leaderboard(
            &store
                .voted_battles()
                .map_err(|e| ApiError::internal(e.to_string()))?,
        );
        let sends = store
            .sends()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok((summary, arena, sends))
    })
    .await?;
    let mut out = String::from("<h2 class=\"section\">Judges and arena</h2>");
    match &summary.judge {
        Some(j) => out.push_str(&format!(
            "<p class=\"muted\">judge {} (<code>vibecheck judge</code>; {} gave no verdict and count for nothing)</p>",
            esc(j),
            summary.failures.len()
        )),
        None => out.push_str("<p class=\"muted\">No judge has graded this run yet: <code>vibecheck judge RUN --judge URL \
            --judge-model NAME</code>. Arena votes appear below as they come.</p>"),
    }
    for (flag, n) in &summary.flags {
        out.push_str(&format!(
            "<p class=\"muted judge-flag\">{n} verdict{} flagged: {} (a token quoted from an answer never decides \
             its verdict; <code>vibecheck export --what judgments</code> lists them)</p>",
            if *n == 1 { "" } else { "s" },
            esc(flag)
        ));
    }
    out.push_str("<div class=\"charts\">");
    for (_, svg) in vibecheck_judge::plot::run_charts(&summary, &arena) {
        out.push_str(&svg);
    }
    out.push_str("</div>");
    if summary
        .checkpoints
        .iter()
        .any(|c| c.score.is_some() || !c.versus.is_empty())
    {
        out.push_str("<table class=\"list\" id=\"judge-table\"><tr><th>checkpoint</th><th>rating ± SE</th><th>opponent</th>\
            <th>win rate (ties ½) ± SE</th><th>length-controlled</th><th>length bias</th><th>n</th></tr>");
        for c in &summary.checkpoints {
            let score = c
                .score
                .map(|(m, se, n)| format!("{m:.2} ± {se:.2} ({n})"))
                .unwrap_or_else(|| "–".into());
            if c.versus.is_empty() {
                out.push_str(&format!("<tr><td>{}</td><td>{score}</td><td></td><td></td><td></td><td></td><td></td></tr>", esc(&c.checkpoint)));
            }
            for v in &c.versus {
                out.push_str(&format!(
                    "<tr><td>{}</td><td>{score}</td><td>{} ({})</td><td>{} ± {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&c.checkpoint),
                    esc(&v.opponent),
                    esc(&v.relation),
                    pct(v.win.tie_adjusted),
                    pct(v.win.se),
                    v.length_controlled.map(|l| pct(l.win_rate)).unwrap_or_else(|| "–".into()),
                    v.length_controlled.map(|l| format!("{:+.2}", l.length_coefficient)).unwrap_or_else(|| "–".into()),
                    v.win.n
                ));
            }
        }
        out.push_str("</table>");
    }
    let suites: Vec<&str> = t.suites.iter().map(|s| s.hash.as_str()).collect();
    let sent: Vec<_> = sends
        .iter()
        .filter(|s| suites.contains(&s.suite_hash.as_str()))
        .collect();
    out.push_str("<p class=\"muted\" id=\"sends\">");
    if sent.is_empty() {
        out.push_str("This run's suites have not been sent to any judge.");
    } else {
        out.push_str("Sent to judges: ");
        let items: Vec<String> = sent
            .iter()
            .map(|s| {
                format!(
                    "suite {} ({}) → {} since {}",
                    esc(&s.suite_name),
                    &s.suite_hash[..12],
                    esc(&s.judge),
                    esc(&s.first_sent[..16.min(s.first_sent.len())])
                )
            })
            .collect();
        out.push_str(&items.join("; "));
    }
    out.push_str("</p>");
    Ok(out)
}

fn diff_html(old: &str, new: &str) -> String {
    word_diff(old, new)
        .iter()
        .map(|p| match p {
            Piece::Same(t) => esc(t),
            Piece::Added(t) => format!("<ins>{}</ins>", esc(t)),
            Piece::Removed(t) => format!("<del>{}</del>", esc(t)),
        })
        .collect()
}

pub async fn prompt_page(
    State(state): State<AppState>,
    Path((run, prompt)): Path<(String, String)>,
    Query(q): Query<TimelineQuery>,
) -> Result<Response, ApiError> {
    let st = state.clone();
    let t = load_timeline(state, run, q).await?;
    let Some(row) = t.prompts.iter().find(|p| p.id == prompt).cloned() else {
        return Err(ApiError::not_found(format!(
            "suite {} has no prompt {prompt:?}",
            &t.suite.hash[..12]
        )));
    };
    let run_id = t.run.id;
    let notes = with_store(&st, move |store| {
        store
            .notes(run_id)
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    let base = format!("/runs/{}", seg(&t.run.name));
    let mut body = format!(
        "<p><a href=\"{base}?suite={}\">← {}</a></p><h1>{}</h1>{}",
        &t.suite.hash[..12],
        esc(&t.run.name),
        esc(&row.id),
        synthetic_banner(&t)
    );
    if let Some(c) = &row.category {
        body.push_str(&format!("<p class=\"muted\">{}</p>", esc(c)));
    }
    body.push_str("<ol class=\"turns\">");
    for turn in &row.turns {
        body.push_str(&format!("<li>{}</li>", esc(turn)));
    }
    body.push_str("</ol>");
    let mut previous: Option<(String, String)> = None;
    for (i, cell) in row.cells.iter().enumerate() {
        let Some(cell) = cell else { continue };
        let ck = &t.checkpoints[i];
        let model_id = format!("{}/{}", t.run.name, ck.name);
        let text = cell.text();
        let first = &cell.answers[0];
        body.push_str(&format!(
            "<section class=\"answer\" id=\"c{}\"><h2>{}{}</h2><p class=\"meta\">",
            ck.id,
            esc(&ck.name),
            ck.step.map(|s| format!(" · step {s}")).unwrap_or_default()
        ));
        body.push_str(&format!(
            "{} words · change {} · {} · seed {} · finish {} · {} prompt + {} completion tokens · checkpoint {} · template {} · vibecheck {}",
            cell.words,
            cell.change.map_or("–".into(), |c| format!("{c:.2}")),
            esc(&params_text(&first.params)),
            first.seed.map_or("–".into(), |s| s.to_string()),
            esc(&first.finish_reason),
            first.prompt_tokens,
            cell.answers.iter().map(|a| a.completion_tokens).sum::<u32>(),
            esc(&ck.content_hash[..12.min(ck.content_hash.len())]),
            esc(&first.template_hash[..12.min(first.template_hash.len())]),
            esc(&first.vibecheck_version),
        ));
        body.push_str(&format!(
            "</p><p class=\"links\"><a href=\"/?model={}\">chat with this checkpoint</a>",
            seg(&model_id)
        ));
        if let Some((prev_id, _)) = &previous {
            body.push_str(&format!(
                " · <a href=\"/?compare={},{}\">side by side with the previous</a>",
                seg(prev_id),
                seg(&model_id)
            ));
        }
        body.push_str("</p>");
        let shown = match &previous {
            Some((_, old)) => diff_html(old, &text),
            None => esc(&text),
        };
        body.push_str(&format!("<pre class=\"text\">{shown}</pre>"));
        // Notes on any turn of this answer, and a form for a new one.
        body.push_str("<div class=\"notes\">");
        for n in notes
            .iter()
            .filter(|n| cell.answers.iter().any(|a| a.id == n.answer_id))
        {
            body.push_str(&format!(
                "<p class=\"note\">{}{}</p>",
                n.tag
                    .as_deref()
                    .map(|t| format!("<span class=\"badge\">{}</span> ", esc(t)))
                    .unwrap_or_default(),
                esc(&n.text)
            ));
        }
        body.push_str(&format!(
            "<form class=\"note-form\" data-answer=\"{}\"><input name=\"text\" placeholder=\"note (e.g. first time it refuses)\" maxlength=\"2000\">\
             <input name=\"tag\" placeholder=\"tag\" maxlength=\"64\" size=\"10\"><button type=\"submit\">Add note</button></form></div></section>",
            first.id
        ));
        previous = Some((model_id, text));
    }
    Ok(page(&format!("{} · {}", row.id, t.run.name), &body))
}

#[derive(Deserialize)]
pub struct NewNote {
    text: String,
    tag: Option<String>,
}

pub async fn add_note(
    State(state): State<AppState>,
    Path(answer): Path<i64>,
    body: Result<Json<NewNote>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(note) = body.map_err(|e| {
        ApiError::bad_request(
            format!(
                "a note is {{\"text\": ..., \"tag\": ...}}: {}",
                e.body_text()
            ),
            None,
        )
    })?;
    let text = note.text.trim().to_string();
    if text.is_empty() || text.len() > 2000 {
        return Err(ApiError::bad_request(
            "a note needs 1 to 2000 characters of text",
            Some("text"),
        ));
    }
    let tag = note
        .tag
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    if tag.as_ref().is_some_and(|t| t.len() > 64) {
        return Err(ApiError::bad_request(
            "a tag is at most 64 characters",
            Some("tag"),
        ));
    }
    let saved = with_store(&state, move |store| {
        store
            .add_note(answer, &text, tag.as_deref())
            .map_err(|e| match e {
                vibecheck_store::StoreError::NotFound(m) => ApiError::not_found(m),
                e => ApiError::internal(e.to_string()),
            })
    })
    .await?;
    Ok((axum::http::StatusCode::CREATED, Json(saved)).into_response())
}
