//! The blind arena: `/arena` pits two served models against each other on one prompt, both answers streaming side
//! by side as "Model A" and "Model B"; the names come back only with the vote. Votes feed the leaderboard at
//! `/arena/leaderboard` (Bradley–Terry with bootstrap intervals, online Elo), beside the judges' own ratings.
//!
//! `POST /api/arena/battles {run?, model_a?, model_b?}` → `{id, run}`; `POST /api/arena/battles/{id}/{a|b}` with a
//! chat body streams that side's answer; `POST /api/arena/battles/{id}/vote {winner: a|b|tie|bad, prompt?}` →
//! `{model_a, model_b}`; `GET /api/arena/prompt?run=R` draws a prompt from the run's suite.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::page::{esc, page_with_script, with_store};
use crate::{ApiError, AppState};

fn store_error(e: vibecheck_store::StoreError) -> ApiError {
    match e {
        vibecheck_store::StoreError::NotFound(m) if m.contains("already") => ApiError {
            status: axum::http::StatusCode::CONFLICT,
            message: m,
            param: None,
            code: None,
        },
        vibecheck_store::StoreError::NotFound(m) => ApiError::not_found(m),
        e => ApiError::internal(e.to_string()),
    }
}

/// A small random number from the clock and a counter (fair enough to pick and order two models).
fn random(n: usize) -> usize {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = t ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % n.max(1) as u64) as usize
}

#[derive(Deserialize, Default)]
pub struct NewBattle {
    run: Option<String>,
    model_a: Option<String>,
    model_b: Option<String>,
}

pub async fn new_battle(
    State(state): State<AppState>,
    body: Result<Json<NewBattle>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let entries = state.registry.entries();
    let pool: Vec<String> = entries
        .iter()
        .filter(|e| (req.run.is_none() || e.run == req.run) && e.problem().is_none())
        .map(|e| e.id.clone())
        .collect();
    let (a, b) = match (req.model_a, req.model_b) {
        (Some(a), Some(b)) => {
            for m in [&a, &b] {
                state.registry.get(m)?;
            }
            if a == b {
                return Err(ApiError::bad_request(
                    "pick two different models",
                    Some("model_b"),
                ));
            }
            (a, b)
        }
        (None, None) => {
            if pool.len() < 2 {
                return Err(ApiError::bad_request(
                    format!(
                        "the arena needs two models{}; this server has {}",
                        req.run
                            .as_ref()
                            .map(|r| format!(" in run {r:?}"))
                            .unwrap_or_default(),
                        pool.len()
                    ),
                    Some("run"),
                ));
            }
            let i = random(pool.len());
            let j = (i + 1 + random(pool.len() - 1)) % pool.len();
            (pool[i].clone(), pool[j].clone())
        }
        _ => {
            return Err(ApiError::bad_request(
                "give both model_a and model_b, or neither for a random pair",
                None,
            ))
        }
    };
    // Which one is shown left is random too.
    let (left, right) = if random(2) == 0 { (a, b) } else { (b, a) };
    let battle = with_store(&state, move |store| {
        store.new_battle(&left, &right, None).map_err(store_error)
    })
    .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(json!({"id": battle.id})),
    )
        .into_response())
}

/// Streams one side's answer: the body is a chat completion request without `model`.
pub async fn battle_side(
    State(state): State<AppState>,
    Path((id, side)): Path<(i64, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let st = state.clone();
    let battle = with_store(&st, move |store| store.battle(id).map_err(store_error))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no battle {id}")))?;
    if battle.winner.is_some() {
        return Err(ApiError::bad_request(
            format!("battle {id} is over; start a new one"),
            None,
        ));
    }
    let (model, label) = match side.as_str() {
        "a" => (battle.model_a, "Model A"),
        "b" => (battle.model_b, "Model B"),
        _ => return Err(ApiError::not_found("a battle has sides a and b")),
    };
    let mut req: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not a chat request: {e}"), None)
    })?;
    if !req.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
            None,
        ));
    }
    req["model"] = json!(model);
    req["stream"] = json!(true);
    crate::chat::generate(
        state,
        crate::openai::Kind::Chat,
        Ok(Bytes::from(req.to_string())),
        Some(label.to_string()),
    )
    .await
}

#[derive(Deserialize)]
pub struct Vote {
    winner: String,
    prompt: Option<String>,
}

pub async fn vote(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    body: Result<Json<Vote>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(v) = body.map_err(|e| {
        ApiError::bad_request(
            format!(
                "a vote is {{\"winner\": \"a\"|\"b\"|\"tie\"|\"bad\"}}: {}",
                e.body_text()
            ),
            None,
        )
    })?;
    if !matches!(v.winner.as_str(), "a" | "b" | "tie" | "bad") {
        return Err(ApiError::bad_request(
            "winner must be a, b, tie or bad",
            Some("winner"),
        ));
    }
    let prompt = v.prompt.map(|p| p.chars().take(4000).collect::<String>());
    let b = with_store(&state, move |store| {
        store
            .vote(id, &v.winner, prompt.as_deref())
            .map_err(store_error)
    })
    .await?;
    Ok(
        Json(json!({"id": b.id, "model_a": b.model_a, "model_b": b.model_b, "winner": b.winner}))
            .into_response(),
    )
}

#[derive(Deserialize)]
pub struct PromptQuery {
    run: Option<String>,
}

/// A random prompt (first turn) from the newest suite with answers in `run` (or in any run).
pub async fn draw_prompt(
    State(state): State<AppState>,
    Query(q): Query<PromptQuery>,
) -> Result<Response, ApiError> {
    let prompt = with_store(&state, move |store| {
        let runs = store.runs().map_err(store_error)?;
        let mut turns = Vec::new();
        for r in runs
            .iter()
            .filter(|r| q.run.is_none() || Some(&r.name) == q.run.as_ref())
        {
            for s in store
                .run_suites(r.id)
                .map_err(store_error)?
                .into_iter()
                .take(1)
            {
                if let Ok(suite) = serde_json::from_str::<vibecheck_suite::Suite>(&s.body) {
                    turns.extend(suite.prompts.into_iter().map(|p| p.turns[0].clone()));
                }
            }
        }
        if turns.is_empty() {
            return Err(ApiError::not_found(
                "no suite has answers in the store yet; type a prompt instead",
            ));
        }
        Ok(turns.swap_remove(random(turns.len())))
    })
    .await?;
    Ok(Json(json!({"prompt": prompt})).into_response())
}

pub async fn arena_page() -> Response {
    let body = "<h1>Blind arena</h1>\
        <p class=\"muted\">Two models answer the same prompt as Model A and Model B; their names appear after your vote. \
        Votes build the <a href=\"/arena/leaderboard\">leaderboard</a>.</p>\
        <div class=\"arena-controls\"><label>Run <select id=\"arena-run\"><option value=\"\">any served model</option></select></label>\
        <button id=\"arena-draw\" type=\"button\">Draw a prompt from the suite</button></div>\
        <textarea id=\"arena-prompt\" rows=\"3\" placeholder=\"Type a prompt, or draw one from the run's suite\"></textarea>\
        <div class=\"arena-controls\"><button id=\"arena-go\" type=\"button\">Start battle</button>\
        <span id=\"arena-status\" class=\"muted\"></span></div>\
        <div class=\"arena-columns\"><section class=\"arena-side\"><h2>Model A</h2><pre id=\"arena-a\" class=\"text\"></pre></section>\
        <section class=\"arena-side\"><h2>Model B</h2><pre id=\"arena-b\" class=\"text\"></pre></section></div>\
        <div class=\"arena-controls\" id=\"arena-votes\" hidden><button data-vote=\"a\">A is better</button>\
        <button data-vote=\"b\">B is better</button><button data-vote=\"tie\">Tie</button>\
        <button data-vote=\"bad\">Both are bad</button></div><p id=\"arena-reveal\" class=\"reveal\" hidden></p>";
    page_with_script("arena", body, "/ui/arena.js")
}

pub async fn leaderboard_page(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (board, judged) = with_store(&state, move |store| {
        let board =
            vibecheck_judge::arena::leaderboard(&store.voted_battles().map_err(store_error)?);
        // The judges' Bradley–Terry ratings from their pairwise verdicts, by model.
        let mut judged: std::collections::HashMap<String, f64> = Default::default();
        for r in store.runs().map_err(store_error)? {
            if let Ok(s) = vibecheck_judge::summarize(store, &r.name, None) {
                judged.extend(s.judge_ratings);
            }
        }
        Ok((board, judged))
    })
    .await?;
    let mut body = String::from("<h1>Arena leaderboard</h1><p class=\"muted\">Bradley–Terry ratings from blind votes (ties and \
        “both bad” count half), 95% bootstrap intervals over 200 resamples, online Elo (K = 16), and each model's rating \
        from LLM-judge pairwise verdicts where a run was judged.</p>");
    if board.is_empty() && judged.is_empty() {
        body.push_str(
            "<p class=\"muted\">No votes yet: <a href=\"/arena\">start a battle</a>.</p>",
        );
    } else {
        body.push_str("<table class=\"list\" id=\"leaderboard\"><tr><th>#</th><th>model</th><th>rating</th><th>95% interval</th>\
            <th>online Elo</th><th>votes</th><th>wins</th><th>judge rating</th></tr>");
        for (i, s) in board.iter().enumerate() {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0} – {:.0}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                i + 1,
                esc(&s.model),
                s.rating,
                s.low,
                s.high,
                s.elo,
                s.votes,
                s.wins,
                judged.get(&s.model).map(|r| format!("{r:.0}")).unwrap_or_else(|| "–".into())
            ));
        }
        let mut rest: Vec<(&String, &f64)> = judged
            .iter()
            .filter(|(m, _)| !board.iter().any(|s| &&s.model == m))
            .collect();
        rest.sort_by(|a, b| b.1.total_cmp(a.1));
        for (m, r) in rest {
            body.push_str(&format!("<tr><td></td><td>{}</td><td>–</td><td></td><td></td><td>0</td><td>0</td><td>{r:.0}</td></tr>", esc(m)));
        }
        body.push_str("</table>");
    }
    Ok(page_with_script(
        "arena leaderboard",
        &body,
        "/ui/timeline.js",
    ))
}
