//! Preference pairs from judged candidates: the highest mean score against the lowest, ties
//! dropped (the paper), with an optional minimum margin and optional length control (among the
//! near-top candidates prefer the shortest, as Meta-Rewarding does against length hacking).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairOptions {
    /// Keep a pair only if chosen − rejected ≥ this (the paper: any positive gap).
    pub min_margin: f64,
    /// With Some(δ): among candidates scoring within δ of the best, choose the shortest.
    pub length_control: Option<f64>,
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            min_margin: f64::MIN_POSITIVE,
            length_control: None,
        }
    }
}

/// A candidate's mean judge score (None if every judgement failed) and its length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub score: Option<f64>,
    pub length: usize,
}

/// Why a prompt gave no pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoPair {
    /// Fewer than two candidates with a score.
    TooFewScored,
    /// Best and worst scores are equal.
    Tie,
    /// The gap is below `min_margin`.
    SmallMargin,
}

/// Indices (chosen, rejected) into `candidates`. Earlier candidates win exact ties of score and
/// length, so the choice is deterministic.
pub fn select_pair(candidates: &[Scored], opts: &PairOptions) -> Result<(usize, usize), NoPair> {
    let scored: Vec<(usize, f64, usize)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.score.map(|s| (i, s, c.length)))
        .collect();
    if scored.len() < 2 {
        return Err(NoPair::TooFewScored);
    }
    let best = scored.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    let worst = scored.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
    if best == worst {
        return Err(NoPair::Tie);
    }
    let chosen = match opts.length_control {
        Some(delta) => scored
            .iter()
            .filter(|c| c.1 >= best - delta && c.1 > worst)
            .min_by_key(|c| c.2)
            .expect("the best candidate qualifies"),
        None => scored.iter().find(|c| c.1 == best).expect("best exists"),
    };
    let rejected = scored.iter().find(|c| c.1 == worst).expect("worst exists");
    if chosen.1 - rejected.1 < opts.min_margin {
        return Err(NoPair::SmallMargin);
    }
    Ok((chosen.0, rejected.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(score: Option<f64>, length: usize) -> Scored {
        Scored { score, length }
    }

    #[test]
    fn best_against_worst_ties_dropped() {
        let cands = [
            c(Some(3.0), 10),
            c(Some(4.67), 50),
            c(None, 5),
            c(Some(1.33), 20),
        ];
        assert_eq!(select_pair(&cands, &PairOptions::default()), Ok((1, 3)));
        let tied = [c(Some(4.0), 1), c(Some(4.0), 2)];
        assert_eq!(
            select_pair(&tied, &PairOptions::default()),
            Err(NoPair::Tie)
        );
        let lonely = [c(Some(4.0), 1), c(None, 2)];
        assert_eq!(
            select_pair(&lonely, &PairOptions::default()),
            Err(NoPair::TooFewScored)
        );
        let margin = PairOptions {
            min_margin: 2.0,
            ..PairOptions::default()
        };
        assert_eq!(
            select_pair(&[c(Some(4.0), 1), c(Some(3.0), 2)], &margin),
            Err(NoPair::SmallMargin)
        );
    }

    #[test]
    fn length_control_prefers_the_shorter_near_top_answer() {
        let cands = [c(Some(5.0), 400), c(Some(4.67), 120), c(Some(2.0), 90)];
        assert_eq!(select_pair(&cands, &PairOptions::default()), Ok((0, 2)));
        let lc = PairOptions {
            length_control: Some(0.5),
            ..PairOptions::default()
        };
        assert_eq!(select_pair(&cands, &lc), Ok((1, 2)));
    }
}
