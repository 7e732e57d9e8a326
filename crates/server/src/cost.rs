//! The `/cost` page: the reports `vibecheck cost --db` stored (each with its levels, the chosen load, $/1M tokens
//! and a chart of $/1M output tokens against concurrency), the hosted APIs beside them, and the price table with
//! every row's source and date. The run page shows the newest report in its own section ([`run_section`]).

use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use crate::page::{esc, page_with_script, with_store};
use crate::{ApiError, AppState};

/// Stored reports shown at most.
const SHOWN: i64 = 10;

fn money(v: Option<f64>) -> String {
    v.map_or("–".into(), vibecheck_engines::cost::money)
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or("–".into(), |s| format!("{:.0}", s * 1000.0))
}

/// One stored report: its figures, levels and chart.
fn report_html(r: &Value) -> String {
    let f = |k: &str| r[k].as_f64();
    let mut out = format!(
        "<section class=\"cost\"><h2>{} <span class=\"muted\">at {}</span></h2><p>{}: <b>${:.4}/hour</b> \
         <span class=\"muted\">({}, checked {})</span>; target {}; requests of ~{} prompt and {} output tokens.</p>",
        esc(r["model"].as_str().unwrap_or("?")),
        esc(r["endpoint"].as_str().unwrap_or("?")),
        esc(r["hardware"].as_str().unwrap_or("?")),
        f("usd_per_hour").unwrap_or(0.0),
        esc(r["price_source"].as_str().unwrap_or("")),
        esc(r["price_checked_on"].as_str().unwrap_or("")),
        esc(r["target"].as_str().unwrap_or("")),
        r["input_tokens"],
        r["output_tokens"],
    );
    match r["chosen"].as_u64() {
        Some(c) => out.push_str(&format!(
            "<p>At concurrency <b>{c}</b>, the highest within the target: {:.1} output tok/s, {:.0} requests/day, \
             <b>{} per 1M output tokens</b>, {} per 1M tokens blended 3:1.</p>",
            f("output_tok_s").unwrap_or(0.0),
            f("requests_per_day").unwrap_or(0.0),
            money(f("usd_per_1m_output")),
            money(f("usd_per_1m_blended")),
        )),
        None => out.push_str("<p class=\"failed\">No load met the target: no sustainable throughput to price.</p>"),
    }
    out.push_str("<table class=\"list\"><tr><th>concurrency</th><th>requests</th><th>failed</th><th>out tok/s</th>\
                   <th>engine tok/s</th><th>p99 TTFT ms</th><th>p99 ITL ms</th><th>$/1M out</th><th>meets</th></tr>");
    let mut points = Vec::new();
    for l in r["levels"].as_array().into_iter().flatten() {
        let c = l["concurrency"].as_f64().unwrap_or(0.0);
        if let Some(p) = l["usd_per_1m_output"].as_f64() {
            points.push((c, p, None));
        }
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            l["concurrency"],
            l["requests"],
            l["failed"],
            l["output_tok_s"].as_f64().unwrap_or(0.0),
            l["engine_output_tok_s"].as_f64().map_or("–".into(), |v| format!("{v:.1}")),
            ms(&l["ttft_p99_s"]),
            ms(&l["itl_p99_s"]),
            money(l["usd_per_1m_output"].as_f64()),
            if l["meets_target"] == Value::Bool(true) { "yes" } else { "no" },
        ));
    }
    out.push_str("</table>");
    out.push_str(&vibecheck_judge::plot::line_chart(
        "$ per 1M output tokens by concurrency",
        "$/1M output tokens",
        &[vibecheck_judge::plot::Series {
            name: r["model"].as_str().unwrap_or("model").to_string(),
            points,
        }],
        None,
    ));
    let apis = r["apis"].as_array().cloned().unwrap_or_default();
    if !apis.is_empty() {
        out.push_str("<table class=\"list\"><tr><th>hosted API</th><th>$/1M in</th><th>$/1M out</th><th>blended 3:1</th>\
                       <th>break-even requests/day</th><th>at utilisation</th><th>checked on</th></tr>");
        for a in apis {
            let u = a["breakeven_utilisation"].as_f64();
            out.push_str(&format!(
                "<tr><td><a href=\"{}\" rel=\"noopener noreferrer\">{}</a> <span class=\"muted\">{}</span></td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(a["source"].as_str().unwrap_or("")),
                esc(a["name"].as_str().unwrap_or("")),
                esc(a["provider"].as_str().unwrap_or("")),
                money(a["usd_per_1m_input"].as_f64()),
                money(a["usd_per_1m_output"].as_f64()),
                money(a["usd_per_1m_blended"].as_f64()),
                a["breakeven_requests_per_day"].as_f64().map_or("–".into(), |v| format!("{v:.0}")),
                u.map_or("–".into(), |u| if u > 1.0 { format!("{:.0}% (never)", u * 100.0) } else { format!("{:.1}%", u * 100.0) }),
                esc(a["checked_on"].as_str().unwrap_or("")),
            ));
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
    out
}

/// One price row: the name linked to its source, the provider, the prices, the date.
fn price_row(source: &str, name: &str, provider: &str, prices: &[f64], checked_on: &str) -> String {
    let cells: String = prices
        .iter()
        .map(|p| format!("<td>{}</td>", vibecheck_engines::cost::money(*p)))
        .collect();
    format!(
        "<tr><td><a href=\"{}\" rel=\"noopener noreferrer\">{}</a></td><td>{}</td>{cells}<td>{}</td></tr>",
        esc(source),
        esc(name),
        esc(provider),
        esc(checked_on)
    )
}

/// The price table, every row with its source and date.
fn price_table_html() -> String {
    let t = vibecheck_engines::prices::PriceTable::bundled();
    let mut out = String::from(
        "<h2>Price table</h2><p class=\"muted\">Bundled with vibecheck; <code>vibecheck cost --prices FILE</code> \
         replaces or adds rows. Each date is when the figure was read from its source.</p>\
         <table class=\"list\"><tr><th>GPU</th><th>provider</th><th>$/GPU-hour</th><th>checked on</th></tr>",
    );
    for g in &t.gpus {
        out.push_str(&price_row(
            &g.source,
            &g.name,
            &g.provider,
            &[g.usd_per_hour],
            &g.checked_on,
        ));
    }
    out.push_str("</table><table class=\"list\"><tr><th>CPU</th><th>provider</th><th>$/vCPU-hour</th><th>checked on</th></tr>");
    for c in &t.cpus {
        out.push_str(&price_row(
            &c.source,
            &c.name,
            &c.provider,
            &[c.usd_per_vcpu_hour],
            &c.checked_on,
        ));
    }
    out.push_str("</table><table class=\"list\"><tr><th>API</th><th>provider</th><th>$/1M in</th><th>$/1M out</th><th>checked on</th></tr>");
    for a in &t.apis {
        out.push_str(&price_row(
            &a.source,
            &a.name,
            &a.provider,
            &[a.usd_per_1m_input, a.usd_per_1m_output],
            &a.checked_on,
        ));
    }
    out.push_str("</table>");
    out
}

async fn stored_reports(state: &AppState) -> Vec<Value> {
    if state.store.is_none() {
        return Vec::new();
    }
    with_store(state, |store| {
        store
            .cost_reports(SHOWN)
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await
    .unwrap_or_default()
    .into_iter()
    .filter_map(|(_, json)| serde_json::from_str(&json).ok())
    .collect()
}

pub async fn cost_page(State(state): State<AppState>) -> Result<Response, ApiError> {
    let reports = stored_reports(&state).await;
    let mut body = String::from("<h1>What serving costs</h1>");
    if reports.is_empty() {
        body.push_str(
            "<p class=\"muted\">No measurement stored yet. <code>vibecheck cost MODEL --db PATH</code> load-tests a \
             model (or <code>--url</code> any OpenAI-compatible endpoint) and stores its report here.</p>",
        );
    }
    for r in &reports {
        body.push_str(&report_html(r));
    }
    body.push_str(&price_table_html());
    Ok(page_with_script("cost", &body, "/ui/timeline.js"))
}

/// The run page's section: what serving a checkpoint of this run costs, from the newest stored report of one of
/// its checkpoints (or of any model, said as such), with a link to `/cost`.
pub async fn run_section(state: &AppState, run: &str, checkpoints: &[String]) -> String {
    let reports = stored_reports(state).await;
    let mine = reports.iter().find(|r| {
        let m = r["model"].as_str().unwrap_or("");
        m.contains(run) || checkpoints.iter().any(|c| m.contains(c.as_str()))
    });
    let mut out = String::from("<h2>Serving cost</h2>");
    match mine {
        Some(r) => {
            out.push_str(
                "<p class=\"muted\">Every checkpoint of a run has the same architecture and size, so each costs \
                 what this measurement found (<a href=\"/cost\">all measurements</a>).</p>",
            );
            out.push_str(&report_html(r));
        }
        None => out.push_str(&format!(
            "<p class=\"muted\">Not measured yet: <code>vibecheck cost CHECKPOINT --db PATH</code> on one of this \
             run's checkpoints stores what serving it costs{} (<a href=\"/cost\">the cost page</a>).</p>",
            if reports.is_empty() { "" } else { "; other models' reports are on the cost page" }
        )),
    }
    out
}
