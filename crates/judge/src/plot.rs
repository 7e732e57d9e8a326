//! Small SVG charts drawn here, for the run page and for `vibecheck plot`: a value (with optional error bars) per
//! training step, one line per series. Presentation attributes only (no inline CSS), so the pages' strict
//! Content-Security-Policy holds; every label is escaped.

/// One line of a chart: (x, y, ± error) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, Option<f64>)>,
}

const COLORS: [&str; 6] = [
    "#2f5d8a", "#c0504d", "#4f8a3f", "#8064a2", "#d08a1e", "#3a9ca6",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Tick values covering [lo, hi]: about five round numbers.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.2}").trim_end_matches('0').to_string()
    }
}

/// A line chart of `series` against the step. `y_range` fixes the y axis (else it fits the data and error bars).
pub fn line_chart(
    title: &str,
    y_label: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
) -> String {
    let (w, h) = (560.0, 260.0);
    let (left, right, top, bottom) = (56.0, 16.0, 28.0, 40.0);
    let all: Vec<&(f64, f64, Option<f64>)> = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
         font-family=\"system-ui, sans-serif\" font-size=\"11\"><title>{}</title>\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\
         <text x=\"{left}\" y=\"17\" font-size=\"13\" font-weight=\"600\" fill=\"#1d1d1b\">{}</text>",
        esc(title),
        esc(title)
    );
    if all.is_empty() {
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"#6b6b66\" text-anchor=\"middle\">no data yet</text></svg>",
            w / 2.0,
            h / 2.0
        ));
        return svg;
    }
    let (x0, x1) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (y0, y1) = y_range.unwrap_or_else(|| {
        let (lo, hi) = all
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                let e = p.2.unwrap_or(0.0);
                (a.min(p.1 - e), b.max(p.1 + e))
            });
        let pad = ((hi - lo) * 0.1).max(1e-6);
        (lo - pad, hi + pad)
    });
    let (x1, y1) = (
        if x1 > x0 { x1 } else { x0 + 1.0 },
        if y1 > y0 { y1 } else { y0 + 1.0 },
    );
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * (h - top - bottom);
    for t in ticks(y0, y1) {
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ececE8\"/>\
             <text x=\"{}\" y=\"{:.1}\" fill=\"#6b6b66\" text-anchor=\"end\">{}</text>",
            w - right,
            left - 6.0,
            py(t) + 4.0,
            label(t),
            y = py(t)
        ));
    }
    let mut xs: Vec<f64> = all.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let every = xs.len().div_ceil(10).max(1);
    for x in xs.iter().step_by(every) {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" fill=\"#6b6b66\" text-anchor=\"middle\">{}</text>",
            px(*x),
            h - bottom + 16.0,
            label(*x)
        ));
    }
    svg.push_str(&format!(
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{b}\" y2=\"{b}\" stroke=\"#9a9a94\"/>\
         <text x=\"{}\" y=\"{}\" fill=\"#6b6b66\" text-anchor=\"middle\">step</text>\
         <text x=\"14\" y=\"{}\" fill=\"#6b6b66\" text-anchor=\"middle\" transform=\"rotate(-90 14 {})\">{}</text>",
        w - right,
        (left + w - right) / 2.0,
        h - 6.0,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
        esc(y_label),
        b = h - bottom
    ));
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<&(f64, f64, Option<f64>)> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        let line: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        svg.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            line.join(" ")
        ));
        for p in pts {
            if let Some(e) = p.2.filter(|e| e.is_finite() && *e > 0.0) {
                let (xa, ya, yb) = (px(p.0), py(p.1 - e), py(p.1 + e));
                svg.push_str(&format!(
                    "<line class=\"errbar\" x1=\"{xa:.1}\" x2=\"{xa:.1}\" y1=\"{ya:.1}\" y2=\"{yb:.1}\" stroke=\"{color}\"/>\
                     <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ya:.1}\" y2=\"{ya:.1}\" stroke=\"{color}\"/>\
                     <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{yb:.1}\" y2=\"{yb:.1}\" stroke=\"{color}\"/>",
                    xa - 3.0,
                    xa + 3.0,
                    xa - 3.0,
                    xa + 3.0
                ));
            }
            svg.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"><title>{}: step {} → {}{}</title></circle>",
                px(p.0),
                py(p.1),
                esc(&s.name),
                label(p.0),
                label((p.1 * 1000.0).round() / 1000.0),
                p.2.map(|e| format!(" ± {}", label((e * 1000.0).round() / 1000.0))).unwrap_or_default()
            ));
        }
        // Legend.
        let lx = left + 8.0 + 150.0 * i as f64;
        svg.push_str(&format!(
            "<rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" fill=\"#1d1d1b\">{}</text>",
            top + 2.0,
            lx + 14.0,
            top + 6.0,
            esc(&s.name)
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// The run page's charts, by file name: judge score, win rates (raw tie-adjusted ± SE and length-controlled),
/// answer length, and arena rating (Bradley–Terry, 95 % interval) against the step.
pub fn run_charts(
    s: &crate::Summary,
    arena: &[crate::arena::Standing],
) -> Vec<(&'static str, String)> {
    let step = |c: &crate::summary::CheckpointScores| c.step.map(|s| s as f64).unwrap_or(f64::NAN);
    let score = Series {
        name: "mean judge rating ± SE".into(),
        points: s
            .checkpoints
            .iter()
            .filter_map(|c| c.score.map(|(m, se, _)| (step(c), m, Some(se))))
            .collect(),
    };
    let mut win: Vec<Series> = Vec::new();
    let mut opponents: Vec<String> = Vec::new();
    for c in &s.checkpoints {
        for v in &c.versus {
            let key = if v.relation == "previous" {
                "previous checkpoint".to_string()
            } else {
                v.opponent.clone()
            };
            if v.relation != "other" && !opponents.contains(&key) {
                opponents.push(key);
            }
        }
    }
    for key in &opponents {
        let pick = |c: &crate::summary::CheckpointScores| {
            c.versus
                .iter()
                .find(|v| {
                    (key == "previous checkpoint" && v.relation == "previous")
                        || (v.relation == "baseline" && &v.opponent == key)
                })
                .cloned()
        };
        win.push(Series {
            name: format!("vs {key}"),
            points: s
                .checkpoints
                .iter()
                .filter_map(|c| pick(c).map(|v| (step(c), v.win.tie_adjusted, Some(v.win.se))))
                .collect(),
        });
        win.push(Series {
            name: format!("vs {key}, length-controlled"),
            points: s
                .checkpoints
                .iter()
                .filter_map(|c| {
                    pick(c)
                        .and_then(|v| v.length_controlled)
                        .map(|l| (step(c), l.win_rate, None))
                })
                .collect(),
        });
    }
    let length = Series {
        name: "mean words per answer".into(),
        points: s
            .checkpoints
            .iter()
            .filter(|c| c.mean_words.is_finite())
            .map(|c| (step(c), c.mean_words, None))
            .collect(),
    };
    let rating = Series {
        name: "arena rating (Bradley–Terry, 95% interval)".into(),
        points: s
            .checkpoints
            .iter()
            .filter_map(|c| {
                let id = format!("{}/{}", s.run, c.checkpoint);
                arena
                    .iter()
                    .find(|a| a.model == id)
                    .map(|a| (step(c), a.rating, Some(((a.high - a.low) / 2.0).abs())))
            })
            .collect(),
    };
    vec![
        (
            "score",
            line_chart(
                "Judge rating by step",
                "rating (1–10)",
                &[score],
                Some((1.0, 10.0)),
            ),
        ),
        (
            "winrate",
            line_chart(
                "Win rate by step (ties count ½)",
                "win rate",
                &win,
                Some((0.0, 1.0)),
            ),
        ),
        (
            "length",
            line_chart("Answer length by step", "words", &[length], None),
        ),
        (
            "arena",
            line_chart("Arena rating by step", "rating", &[rating], None),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_have_points_error_bars_and_escaped_labels() {
        let s = Series {
            name: "judge <b>".into(),
            points: vec![
                (0.0, 2.0, Some(0.5)),
                (100.0, 6.5, Some(0.4)),
                (200.0, 8.0, None),
            ],
        };
        let svg = line_chart("score & steps", "rating", &[s], Some((1.0, 10.0)));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert_eq!(svg.matches("class=\"errbar\"").count(), 2);
        assert!(
            svg.contains("score &amp; steps")
                && svg.contains("judge &lt;b&gt;")
                && !svg.contains("<b>")
        );
        assert!(!svg.contains("style="), "no inline CSS");
        assert!(line_chart("t", "y", &[], None).contains("no data yet"));
        let t = ticks(0.0, 1.0);
        assert_eq!(t.len(), 6, "{t:?}");
        assert!(t[0] == 0.0 && (t[5] - 1.0).abs() < 1e-9, "{t:?}");
        assert_eq!(ticks(1.0, 10.0), vec![2.0, 4.0, 6.0, 8.0, 10.0]);
    }
}
