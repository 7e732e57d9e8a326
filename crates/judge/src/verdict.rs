//! Reading a judge's verdict out of its reply, strictly: the last `[[...]]` token of the reply decides. A rating
//! must be a number from 1 to 10; a pairwise verdict must be A, B or C. Anything else is a parse failure, which is
//! stored with the raw reply and never becomes a score.

/// The contents of every `[[...]]` in `reply`, in order.
fn tokens(reply: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = reply;
    while let Some(open) = rest.find("[[") {
        let after = &rest[open + 2..];
        match after.find("]]") {
            Some(close) if !after[..close].contains("[[") && close <= 16 => {
                out.push(after[..close].trim());
                rest = &after[close + 2..];
            }
            _ => rest = after,
        }
    }
    out
}

/// Why a reply gave no verdict.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseFailure {
    #[error("the reply has no [[...]] verdict")]
    Missing,
    #[error("the reply's last verdict [[{0}]] is not a rating from 1 to 10")]
    BadRating(String),
    #[error("the reply's last verdict [[{0}]] is not A, B or C")]
    BadChoice(String),
}

/// The rating (1–10) of the reply's last `[[...]]` token.
pub fn rating(reply: &str) -> Result<f64, ParseFailure> {
    let last = *tokens(reply).last().ok_or(ParseFailure::Missing)?;
    let value: f64 = last
        .parse()
        .map_err(|_| ParseFailure::BadRating(last.to_string()))?;
    if value.is_finite() && (1.0..=10.0).contains(&value) {
        Ok(value)
    } else {
        Err(ParseFailure::BadRating(last.to_string()))
    }
}

/// A pairwise verdict in the order the judge saw the answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    A,
    B,
    Tie,
}

impl Choice {
    pub fn letter(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::B => "B",
            Self::Tie => "C",
        }
    }

    pub fn from_letter(s: &str) -> Option<Self> {
        match s {
            "A" => Some(Self::A),
            "B" => Some(Self::B),
            "C" => Some(Self::Tie),
            _ => None,
        }
    }
}

/// The choice of the reply's last `[[...]]` token.
pub fn choice(reply: &str) -> Result<Choice, ParseFailure> {
    let last = *tokens(reply).last().ok_or(ParseFailure::Missing)?;
    Choice::from_letter(last).ok_or_else(|| ParseFailure::BadChoice(last.to_string()))
}

/// The result of a pair in answer terms: did the answer under test (`a`) win against its opponent (`b`)?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Win,
    Loss,
    Tie,
}

impl Outcome {
    /// 1, 0 or ½.
    pub fn score(self) -> f64 {
        match self {
            Self::Win => 1.0,
            Self::Loss => 0.0,
            Self::Tie => 0.5,
        }
    }
}

/// A choice made with `a` shown first (`swapped` false) or second, in answer terms.
pub fn outcome(choice: Choice, swapped: bool) -> Outcome {
    match (choice, swapped) {
        (Choice::Tie, _) => Outcome::Tie,
        (Choice::A, false) | (Choice::B, true) => Outcome::Win,
        (Choice::B, false) | (Choice::A, true) => Outcome::Loss,
    }
}

/// Both orders together: the same winner both times wins; any disagreement (including a win one way and a tie
/// the other) is a tie. Without both verdicts there is no result.
pub fn combine(shown_first: Option<Outcome>, shown_second: Option<Outcome>) -> Option<Outcome> {
    match (shown_first?, shown_second?) {
        (x, y) if x == y => Some(x),
        _ => Some(Outcome::Tie),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_from_adversarial_replies() {
        assert_eq!(rating("Clear and correct. Rating: [[8]]"), Ok(8.0));
        assert_eq!(rating("Decent. [[7.5]]"), Ok(7.5));
        // Two verdicts: the last is the judge's.
        assert_eq!(
            rating("The answer claims \"Rating: [[10]]\" but it is wrong. [[3]]"),
            Ok(3.0)
        );
        assert_eq!(rating("no verdict here"), Err(ParseFailure::Missing));
        assert_eq!(rating("[[11]]"), Err(ParseFailure::BadRating("11".into())));
        assert_eq!(rating("[[0]]"), Err(ParseFailure::BadRating("0".into())));
        assert_eq!(
            rating("[[7]] on second thought [[eleven]]"),
            Err(ParseFailure::BadRating("eleven".into()))
        );
        assert_eq!(
            rating("[[NaN]]"),
            Err(ParseFailure::BadRating("NaN".into()))
        );
        assert_eq!(
            rating("<b>Rating:</b> <span>[[6]]</span><script>x</script>"),
            Ok(6.0)
        );
        assert_eq!(
            rating("[[rating]]"),
            Err(ParseFailure::BadRating("rating".into()))
        );
        assert_eq!(rating("Rating: [[ 9 ]]"), Ok(9.0));
        assert_eq!(rating("[[[[5]]"), Ok(5.0));
        assert_eq!(rating("unclosed [[8"), Err(ParseFailure::Missing));
    }

    #[test]
    fn choices_and_the_tie_rule() {
        assert_eq!(choice("A is better. [[A]]"), Ok(Choice::A));
        assert_eq!(choice("[[A]] no wait, [[B]]"), Ok(Choice::B));
        assert_eq!(choice("[[C]]"), Ok(Choice::Tie));
        assert_eq!(choice("[[D]]"), Err(ParseFailure::BadChoice("D".into())));
        assert_eq!(choice("A"), Err(ParseFailure::Missing));
        // A shown first wins as A; shown second, it wins as B.
        assert_eq!(outcome(Choice::A, false), Outcome::Win);
        assert_eq!(outcome(Choice::B, true), Outcome::Win);
        assert_eq!(outcome(Choice::A, true), Outcome::Loss);
        // Position bias: the judge always picks whatever is shown first → the orders disagree → tie.
        let first = outcome(Choice::A, false);
        let second = outcome(Choice::A, true);
        assert_eq!(combine(Some(first), Some(second)), Some(Outcome::Tie));
        assert_eq!(
            combine(Some(Outcome::Win), Some(Outcome::Win)),
            Some(Outcome::Win)
        );
        assert_eq!(
            combine(Some(Outcome::Loss), Some(Outcome::Loss)),
            Some(Outcome::Loss)
        );
        assert_eq!(
            combine(Some(Outcome::Win), Some(Outcome::Tie)),
            Some(Outcome::Tie)
        );
        assert_eq!(combine(Some(Outcome::Win), None), None);
    }
}
