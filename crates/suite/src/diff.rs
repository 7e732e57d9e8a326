//! How much an answer changed between two checkpoints: a change score (word-level edit distance divided by the
//! longer answer's word count: 0 identical, 1 nothing in common) and a word diff for display.

/// The words of a text, each with the whitespace that follows it, so a diff can be shown with the original spacing.
pub fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        match (start, c.is_whitespace()) {
            (None, _) => {
                start = Some(i);
                in_space = c.is_whitespace();
            }
            (Some(s), false) if in_space => {
                out.push(&text[s..i]);
                start = Some(i);
                in_space = false;
            }
            (Some(_), true) => in_space = true,
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

fn key(w: &str) -> &str {
    w.trim_end()
}

/// Word-level Levenshtein distance / the longer text's word count, in [0, 1]. Two empty texts: 0.
pub fn change_score(a: &str, b: &str) -> f64 {
    let (wa, wb) = (words(a), words(b));
    let longest = wa.len().max(wb.len());
    if longest == 0 {
        return 0.0;
    }
    let mut prev: Vec<usize> = (0..=wb.len()).collect();
    let mut cur = vec![0; wb.len() + 1];
    for (i, x) in wa.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in wb.iter().enumerate() {
            let sub = prev[j] + usize::from(key(x) != key(y));
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[wb.len()] as f64 / longest as f64
}

/// One piece of a word diff.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "op", content = "text", rename_all = "lowercase")]
pub enum Piece {
    Same(String),
    Added(String),
    Removed(String),
}

/// Texts longer than this many words are compared line by line instead (the table is words × words).
const MAX_WORDS: usize = 3000;

/// A word diff from `old` to `new` (longest common subsequence), adjacent pieces of one kind merged.
pub fn word_diff(old: &str, new: &str) -> Vec<Piece> {
    let (a, b) = (words(old), words(new));
    if a.len() > MAX_WORDS || b.len() > MAX_WORDS {
        let la: Vec<&str> = old.split_inclusive('\n').collect();
        let lb: Vec<&str> = new.split_inclusive('\n').collect();
        return lcs_diff(&la, &lb);
    }
    lcs_diff(&a, &b)
}

fn lcs_diff(a: &[&str], b: &[&str]) -> Vec<Piece> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: common subsequence length of a[i..] and b[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if key(a[i]) == key(b[j]) {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let mut out: Vec<Piece> = Vec::new();
    let mut push = |p: Piece| match (out.last_mut(), &p) {
        (Some(Piece::Same(s)), Piece::Same(t))
        | (Some(Piece::Added(s)), Piece::Added(t))
        | (Some(Piece::Removed(s)), Piece::Removed(t)) => s.push_str(t),
        _ => out.push(p),
    };
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && key(a[i]) == key(b[j]) {
            push(Piece::Same(b[j].to_string()));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[at(i, j + 1)] >= lcs[at(i + 1, j)]) {
            push(Piece::Added(b[j].to_string()));
            j += 1;
        } else {
            push(Piece::Removed(a[i].to_string()));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_their_spacing() {
        assert_eq!(
            words("  Hello,  world!\nBye"),
            vec!["  ", "Hello,  ", "world!\n", "Bye"]
        );
        assert_eq!(words("").len(), 0);
        assert_eq!(words("one").concat(), "one");
    }

    #[test]
    fn change_scores_on_known_texts() {
        assert_eq!(change_score("the cat sat", "the cat sat"), 0.0);
        assert_eq!(change_score("", ""), 0.0);
        assert_eq!(change_score("a b c d", "w x y z"), 1.0);
        // One word replaced out of four.
        assert_eq!(change_score("the cat sat down", "the dog sat down"), 0.25);
        // One word added to three: distance 1, longest 4.
        assert_eq!(change_score("the cat sat", "the cat sat down"), 0.25);
        // Spacing alone is not a change.
        assert_eq!(change_score("the  cat\nsat", "the cat sat"), 0.0);
        assert_eq!(change_score("", "something new"), 1.0);
    }

    #[test]
    fn word_diff_marks_changes_and_rebuilds_both_texts() {
        let d = word_diff("the cat sat on the mat", "the dog sat on the mat today");
        assert_eq!(
            d.iter().filter(|p| !matches!(p, Piece::Same(_))).count(),
            3,
            "cat→dog and the added word: {d:?}"
        );
        let old: String = d
            .iter()
            .filter_map(|p| match p {
                Piece::Same(t) | Piece::Removed(t) => Some(t.as_str()),
                Piece::Added(_) => None,
            })
            .collect();
        let new: String = d
            .iter()
            .filter_map(|p| match p {
                Piece::Same(t) | Piece::Added(t) => Some(t.as_str()),
                Piece::Removed(_) => None,
            })
            .collect();
        assert_eq!(
            old.split_whitespace().collect::<Vec<_>>(),
            "the cat sat on the mat"
                .split_whitespace()
                .collect::<Vec<_>>()
        );
        assert_eq!(
            new.split_whitespace().collect::<Vec<_>>(),
            "the dog sat on the mat today"
                .split_whitespace()
                .collect::<Vec<_>>()
        );
        assert!(d.contains(&Piece::Removed("cat ".into())));
        assert!(d.contains(&Piece::Added("dog ".into())));
        assert_eq!(
            word_diff("same text", "same text"),
            vec![Piece::Same("same text".into())]
        );
    }
}
