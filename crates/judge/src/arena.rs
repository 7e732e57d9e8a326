//! The blind arena's leaderboard: votes between two models become Bradley–Terry ratings with bootstrap 95 %
//! intervals and an online Elo. "Both bad" counts as a tie, as in Chatbot Arena.

use serde::Serialize;
use vibecheck_store::Battle;

use crate::stats::{self, Game};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Standing {
    pub model: String,
    pub rating: f64,
    pub low: f64,
    pub high: f64,
    pub elo: f64,
    pub votes: usize,
    pub wins: usize,
}

/// The leaderboard from voted battles, best first.
pub fn leaderboard(battles: &[Battle]) -> Vec<Standing> {
    let mut names: Vec<String> = Vec::new();
    let mut idx = |m: &str| match names.iter().position(|n| n == m) {
        Some(i) => i,
        None => {
            names.push(m.to_string());
            names.len() - 1
        }
    };
    let mut games = Vec::new();
    for b in battles {
        let score_a = match b.winner.as_deref() {
            Some("a") => 1.0,
            Some("b") => 0.0,
            Some("tie" | "bad") => 0.5,
            _ => continue,
        };
        games.push(Game {
            a: idx(&b.model_a),
            b: idx(&b.model_b),
            score_a,
        });
    }
    if games.is_empty() {
        return Vec::new();
    }
    let ratings = stats::bradley_terry(&games, names.len(), 0.5);
    let ci = stats::bootstrap_intervals(&games, names.len(), 0.5, 200, 0xA12E4A);
    let elo = stats::online_elo(&games, names.len(), 16.0);
    let mut out: Vec<Standing> = names
        .iter()
        .enumerate()
        .map(|(i, m)| Standing {
            model: m.clone(),
            rating: ratings[i],
            low: ci[i].0,
            high: ci[i].1,
            elo: elo[i],
            votes: games.iter().filter(|g| g.a == i || g.b == i).count(),
            wins: games
                .iter()
                .filter(|g| (g.a == i && g.score_a == 1.0) || (g.b == i && g.score_a == 0.0))
                .count(),
        })
        .collect();
    out.sort_by(|a, b| b.rating.total_cmp(&a.rating));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn battle(a: &str, b: &str, w: &str) -> Battle {
        Battle {
            id: 0,
            model_a: a.into(),
            model_b: b.into(),
            prompt: None,
            winner: Some(w.into()),
            created: String::new(),
            voted: None,
        }
    }

    #[test]
    fn votes_rank_models_and_both_bad_is_a_tie() {
        let votes = vec![
            battle("x", "y", "a"),
            battle("y", "x", "b"),
            battle("x", "y", "a"),
            battle("y", "x", "bad"),
        ];
        let board = leaderboard(&votes);
        assert_eq!(board[0].model, "x");
        assert_eq!((board[0].votes, board[0].wins), (4, 3));
        assert!(
            board[0].rating > board[1].rating
                && board[0].low <= board[0].rating
                && board[0].rating <= board[0].high + 1e-9
        );
        assert!(board[0].elo > 1000.0 && board[1].elo < 1000.0);
        assert!(leaderboard(&[]).is_empty());
    }
}
