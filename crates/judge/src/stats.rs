//! The numbers: win rates with standard errors, a length-controlled win rate (a logistic model of the outcome on the
//! standardized length difference, read at equal length, as AlpacaEval 2 does), Bradley–Terry ratings with bootstrap
//! intervals (as Chatbot Arena does) and an online Elo.

use serde::Serialize;

/// Outcomes of one model against its opponents (1 win, ½ tie, 0 loss per question).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WinRate {
    pub n: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// wins / n.
    pub win_rate: f64,
    /// (wins + ½ ties) / n.
    pub tie_adjusted: f64,
    /// Standard error of the tie-adjusted rate (sample standard deviation of the per-question scores / √n).
    pub se: f64,
}

/// Win rate of per-question scores (each 0, ½ or 1).
pub fn win_rate(scores: &[f64]) -> WinRate {
    let n = scores.len();
    let wins = scores.iter().filter(|s| **s == 1.0).count();
    let ties = scores.iter().filter(|s| **s == 0.5).count();
    let (mean, se) = mean_se(scores);
    WinRate {
        n,
        wins,
        ties,
        losses: n - wins - ties,
        win_rate: if n == 0 {
            f64::NAN
        } else {
            wins as f64 / n as f64
        },
        tie_adjusted: mean,
        se,
    }
}

/// Mean and its standard error (sample standard deviation / √n; 0 with one value, NaN with none).
pub fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The length-controlled win rate and what length did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LengthControlled {
    /// The modelled win rate at equal length: σ(intercept).
    pub win_rate: f64,
    /// The raw tie-adjusted win rate, for comparison.
    pub raw: f64,
    /// Log-odds of winning per standard deviation of length difference: > 0 means the judge rewards length.
    pub length_coefficient: f64,
    /// raw − length-controlled: how much of the raw rate length explains.
    pub length_bias: f64,
}

/// Fits `P(win) = σ(b0 + b1·x)`, `x` = length difference (model − opponent, in words) divided by its standard
/// deviation (population; 0 when all differences are equal), to outcomes 0, ½ or 1 by Newton's method on the
/// log-likelihood (ties count as half a win and half a loss). A tiny ridge (1e-6) keeps separable data finite.
pub fn length_controlled(outcomes: &[(f64, f64)]) -> LengthControlled {
    let n = outcomes.len() as f64;
    let raw = outcomes.iter().map(|o| o.0).sum::<f64>() / n;
    let mean_d = outcomes.iter().map(|o| o.1).sum::<f64>() / n;
    let sd = (outcomes.iter().map(|o| (o.1 - mean_d).powi(2)).sum::<f64>() / n).sqrt();
    let xs: Vec<f64> = outcomes
        .iter()
        .map(|o| if sd > 0.0 { o.1 / sd } else { 0.0 })
        .collect();
    let (mut b0, mut b1) = (0.0f64, 0.0f64);
    let ridge = 1e-6;
    for _ in 0..100 {
        let (mut g0, mut g1, mut h00, mut h01, mut h11) =
            (-ridge * b0, -ridge * b1, ridge, 0.0, ridge);
        for (i, (y, _)) in outcomes.iter().enumerate() {
            let x = xs[i];
            let p = sigmoid(b0 + b1 * x);
            let w = p * (1.0 - p);
            g0 += y - p;
            g1 += (y - p) * x;
            h00 += w;
            h01 += w * x;
            h11 += w * x * x;
        }
        let det = h00 * h11 - h01 * h01;
        if det.abs() < 1e-300 {
            break;
        }
        let d0 = (h11 * g0 - h01 * g1) / det;
        let d1 = (h00 * g1 - h01 * g0) / det;
        b0 += d0;
        b1 += d1;
        if d0.abs() + d1.abs() < 1e-12 {
            break;
        }
    }
    let win_rate = sigmoid(b0);
    LengthControlled {
        win_rate,
        raw,
        length_coefficient: b1,
        length_bias: raw - win_rate,
    }
}

/// One game: players `a` and `b` (indices), and `a`'s score (1, ½ or 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Game {
    pub a: usize,
    pub b: usize,
    pub score_a: f64,
}

/// Bradley–Terry strengths by the minorization–maximization iteration (Hunter 2004), ties as half a win each, shown
/// on the Elo scale: `1000 + 400·log10(strength)` with the strengths' geometric mean at 1000. `prior` adds that
/// many wins and losses against a virtual player of average strength to every player (0 for the plain maximum
/// likelihood estimate; > 0 keeps a player who won or lost everything finite). Players with no games get NaN.
pub fn bradley_terry(games: &[Game], players: usize, prior: f64) -> Vec<f64> {
    let mut wins = vec![prior; players];
    let mut played = vec![false; players];
    // Pair counts.
    let mut n = vec![0.0f64; players * players];
    for g in games {
        wins[g.a] += g.score_a;
        wins[g.b] += 1.0 - g.score_a;
        n[g.a * players + g.b] += 1.0;
        n[g.b * players + g.a] += 1.0;
        played[g.a] = true;
        played[g.b] = true;
    }
    let mut p = vec![1.0f64; players];
    for _ in 0..10_000 {
        let mut next = p.clone();
        for i in 0..players {
            if !played[i] {
                continue;
            }
            // The virtual opponent (strength 1) for the prior: 2·prior games.
            let mut denom = if prior > 0.0 {
                2.0 * prior / (p[i] + 1.0)
            } else {
                0.0
            };
            for j in 0..players {
                let nij = n[i * players + j];
                if nij > 0.0 {
                    denom += nij / (p[i] + p[j]);
                }
            }
            next[i] = if denom > 0.0 {
                (wins[i] / denom).max(1e-12)
            } else {
                p[i]
            };
        }
        // Geometric mean of the played players at 1.
        let logs: Vec<f64> = (0..players)
            .filter(|i| played[*i])
            .map(|i| next[i].ln())
            .collect();
        let shift = (logs.iter().sum::<f64>() / logs.len().max(1) as f64).exp();
        let mut change = 0.0f64;
        for i in 0..players {
            if played[i] {
                next[i] /= shift;
                change = change.max((next[i].ln() - p[i].ln()).abs());
            }
        }
        p = next;
        if change < 1e-10 {
            break;
        }
    }
    (0..players)
        .map(|i| {
            if played[i] {
                1000.0 + 400.0 * p[i].log10()
            } else {
                f64::NAN
            }
        })
        .collect()
}

/// 95 % percentile intervals of Bradley–Terry ratings over `rounds` bootstrap resamples of the games (seeded, so
/// the same votes give the same intervals).
pub fn bootstrap_intervals(
    games: &[Game],
    players: usize,
    prior: f64,
    rounds: usize,
    seed: u64,
) -> Vec<(f64, f64)> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); players];
    for _ in 0..rounds {
        let resample: Vec<Game> = (0..games.len())
            .map(|_| games[(next() % games.len() as u64) as usize])
            .collect();
        for (i, r) in bradley_terry(&resample, players, prior)
            .into_iter()
            .enumerate()
        {
            if r.is_finite() {
                samples[i].push(r);
            }
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            if s.is_empty() {
                return (f64::NAN, f64::NAN);
            }
            s.sort_by(f64::total_cmp);
            let at = |q: f64| s[((q * (s.len() - 1) as f64).round() as usize).min(s.len() - 1)];
            (at(0.025), at(0.975))
        })
        .collect()
}

/// Online Elo over the games in order: everyone starts at 1000; `k` points per game at stake.
pub fn online_elo(games: &[Game], players: usize, k: f64) -> Vec<f64> {
    let mut r = vec![1000.0f64; players];
    for g in games {
        let expected = 1.0 / (1.0 + 10f64.powf((r[g.b] - r[g.a]) / 400.0));
        let delta = k * (g.score_a - expected);
        r[g.a] += delta;
        r[g.b] -= delta;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() < tol
    }

    #[test]
    fn win_rate_and_its_standard_error_by_hand() {
        // 2 wins, 1 tie, 1 loss: tie-adjusted 2.5/4 = 0.625; scores 1,1,.5,0: sample sd = 0.4787, se = 0.2394.
        let w = win_rate(&[1.0, 1.0, 0.5, 0.0]);
        assert_eq!((w.n, w.wins, w.ties, w.losses), (4, 2, 1, 1));
        assert_eq!(w.win_rate, 0.5);
        assert_eq!(w.tie_adjusted, 0.625);
        assert!(close(w.se, 0.239_357, 1e-6), "{}", w.se);
    }

    #[test]
    fn length_controlled_win_rate_on_a_table_solved_by_hand() {
        // Length differences of ±d in equal numbers standardize to ±1. Longer answers win 8 of 10, shorter ones 4
        // of 10: the saturated fit has σ(b0+b1) = 0.8 and σ(b0−b1) = 0.4, so b0 = (logit .8 + logit .4)/2 and
        // b1 = (logit .8 − logit .4)/2.
        let mut t = Vec::new();
        for i in 0..10 {
            t.push((if i < 8 { 1.0 } else { 0.0 }, 120.0));
            t.push((if i < 4 { 1.0 } else { 0.0 }, -120.0));
        }
        let logit = |p: f64| (p / (1.0 - p)).ln();
        let b0 = (logit(0.8) + logit(0.4)) / 2.0;
        let b1 = (logit(0.8) - logit(0.4)) / 2.0;
        let lc = length_controlled(&t);
        assert!(close(lc.win_rate, sigmoid(b0), 1e-6), "{lc:?}");
        assert!(close(lc.win_rate, 0.620_2, 1e-4));
        assert!(close(lc.length_coefficient, b1, 1e-5), "{lc:?}");
        assert!(close(lc.raw, 0.6, 1e-12));
        assert!(close(lc.length_bias, 0.6 - sigmoid(b0), 1e-6));
        // No length differences: the length-controlled rate is the raw rate.
        let flat = length_controlled(&[(1.0, 5.0), (0.0, 5.0), (0.5, 5.0), (1.0, 5.0)]);
        assert!(close(flat.win_rate, 0.625, 1e-6), "{flat:?}");
    }

    #[test]
    fn bradley_terry_recovers_strengths_from_a_consistent_table() {
        // Strengths 4 : 2 : 1. Every pair's results match its expected share exactly (0 beats 1 two of three,
        // 0 beats 2 four of five, 1 beats 2 two of three), so the maximum likelihood strengths are 4 : 2 : 1 and
        // neighbours differ by 400·log10(2) = 120.41 Elo points.
        let mut games = Vec::new();
        let mut add = |a, b, wins: usize, losses: usize| {
            for _ in 0..wins {
                games.push(Game { a, b, score_a: 1.0 });
            }
            for _ in 0..losses {
                games.push(Game { a, b, score_a: 0.0 });
            }
        };
        add(0, 1, 2, 1);
        add(0, 2, 4, 1);
        add(1, 2, 2, 1);
        let r = bradley_terry(&games, 4, 0.0);
        let step = 400.0 * 2f64.log10();
        assert!(
            close(r[0] - r[1], step, 1e-6) && close(r[1] - r[2], step, 1e-6),
            "{r:?}"
        );
        assert!(
            close((r[0] + r[1] + r[2]) / 3.0, 1000.0, 1e-6),
            "geometric mean at 1000: {r:?}"
        );
        assert!(r[3].is_nan(), "a player without games has no rating");
        // Two players, 3 wins to 1: 400·log10(3).
        let two = bradley_terry(
            &[
                Game {
                    a: 0,
                    b: 1,
                    score_a: 1.0,
                },
                Game {
                    a: 0,
                    b: 1,
                    score_a: 1.0,
                },
                Game {
                    a: 1,
                    b: 0,
                    score_a: 0.0,
                },
                Game {
                    a: 0,
                    b: 1,
                    score_a: 0.0,
                },
            ],
            2,
            0.0,
        );
        assert!(
            close(two[0] - two[1], 400.0 * 3f64.log10(), 1e-6),
            "{two:?}"
        );
        // Ties count half: one win and one tie out of two is 1.5 : 0.5.
        let tie = bradley_terry(
            &[
                Game {
                    a: 0,
                    b: 1,
                    score_a: 1.0,
                },
                Game {
                    a: 0,
                    b: 1,
                    score_a: 0.5,
                },
            ],
            2,
            0.0,
        );
        assert!(
            close(tie[0] - tie[1], 400.0 * 3f64.log10(), 1e-6),
            "{tie:?}"
        );
        let ci = bootstrap_intervals(&games, 3, 0.5, 200, 7);
        assert!(
            ci.iter()
                .zip(&r)
                .all(|((lo, hi), x)| lo <= hi && *lo < *x + 60.0 && *hi > *x - 60.0),
            "{ci:?} {r:?}"
        );
        assert_eq!(ci, bootstrap_intervals(&games, 3, 0.5, 200, 7), "seeded");
    }

    #[test]
    fn online_elo_moves_toward_the_winner() {
        let r = online_elo(
            &[Game {
                a: 0,
                b: 1,
                score_a: 1.0,
            }],
            2,
            16.0,
        );
        assert_eq!(r, vec![1008.0, 992.0]);
        let tie = online_elo(
            &[Game {
                a: 0,
                b: 1,
                score_a: 0.5,
            }],
            2,
            16.0,
        );
        assert_eq!(tie, vec![1000.0, 1000.0]);
    }
}
