//! The methods on seeded simulations with a known difference: how often the interval
//! holds it, how often A against A is called a difference, and whether a real one is
//! found.

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Exp, LogNormal, Normal, StudentT};

use super::*;

/// The noise of one run's figure: symmetric, skewed, and heavy-tailed.
#[derive(Clone, Copy, Debug)]
enum Noise {
    Normal,
    LogNormal,
    Exponential,
    HeavyTails,
}

const NOISES: [Noise; 4] = [
    Noise::Normal,
    Noise::LogNormal,
    Noise::Exponential,
    Noise::HeavyTails,
];

impl Noise {
    fn draw(self, rng: &mut SmallRng) -> f64 {
        match self {
            Noise::Normal => Normal::new(0.0, 1.0).expect("valid").sample(rng),
            Noise::LogNormal => LogNormal::new(0.0, 0.8).expect("valid").sample(rng),
            Noise::Exponential => Exp::new(1.0).expect("valid").sample(rng),
            Noise::HeavyTails => StudentT::new(2.0).expect("valid").sample(rng),
        }
    }
}

/// `runs` repeats per arm, interleaved: each pair shares a drift of the host; B is A
/// moved by `delta`.
fn paired_runs(rng: &mut SmallRng, noise: Noise, runs: usize, delta: f64) -> (Vec<f64>, Vec<f64>) {
    let drift = Normal::new(0.0, 3.0).expect("valid");
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..runs {
        let host = 10.0 + drift.sample(rng);
        a.push(host + noise.draw(rng));
        b.push(host + delta + noise.draw(rng));
    }
    (a, b)
}

/// Two series run apart: B is A moved by `delta`.
fn apart_runs(
    rng: &mut SmallRng,
    noise: Noise,
    m: usize,
    n: usize,
    delta: f64,
) -> (Vec<f64>, Vec<f64>) {
    let a = (0..m).map(|_| 10.0 + noise.draw(rng)).collect();
    let b = (0..n).map(|_| 10.0 + delta + noise.draw(rng)).collect();
    (a, b)
}

/// The share of `trials` simulated comparisons whose interval holds `delta`.
fn coverage(
    trials: usize,
    seed: u64,
    mut compare: impl FnMut(&mut SmallRng) -> Estimate,
    delta: f64,
) -> f64 {
    let mut rng = SmallRng::seed_from_u64(seed);
    let covered = (0..trials)
        .filter(|_| {
            let e = compare(&mut rng);
            e.interval
                .expect("enough repeats for an interval")
                .contains(delta)
        })
        .count();
    covered as f64 / trials as f64
}

#[test]
fn paired_intervals_hold_a_known_difference_at_least_93_percent_of_the_time() {
    let delta = 0.5;
    for noise in NOISES {
        for (runs, trials) in [(5, 4_000), (6, 1_000), (10, 1_000), (20, 1_000)] {
            let seed = 17 + runs as u64;
            let got = coverage(
                trials,
                seed,
                |rng| {
                    let (a, b) = paired_runs(rng, noise, runs, delta);
                    paired(&a, &b).expect("pairs")
                },
                delta,
            );
            assert!(
                got >= 0.93,
                "{noise:?}, {runs} repeats: the interval held the difference in {:.1}% of {trials}",
                got * 100.0
            );
        }
    }
}

#[test]
fn unpaired_intervals_hold_a_known_shift_at_least_93_percent_of_the_time() {
    let delta = -1.5;
    for noise in NOISES {
        for (m, n) in [(5, 5), (5, 8), (10, 10)] {
            let got = coverage(
                1_000,
                3 + (m * n) as u64,
                |rng| {
                    let (a, b) = apart_runs(rng, noise, m, n, delta);
                    shift(&a, &b).expect("both sides")
                },
                delta,
            );
            assert!(
                got >= 0.93,
                "{noise:?}, {m} against {n}: the interval held the shift in {:.1}% of 1,000",
                got * 100.0
            );
        }
    }
}

#[test]
fn the_same_arm_twice_is_rarely_called_a_difference() {
    let mut rng = SmallRng::seed_from_u64(99);
    for noise in NOISES {
        let called = (0..1_000)
            .filter(|_| {
                let (a, b) = paired_runs(&mut rng, noise, 6, 0.0);
                paired(&a, &b).expect("pairs").verdict() != Verdict::NoDifference
            })
            .count();
        assert!(
            called <= 70,
            "{noise:?}: A against A called a difference {called} times of 1,000"
        );
    }
}

#[test]
fn a_real_difference_is_found_with_enough_repeats() {
    let mut rng = SmallRng::seed_from_u64(5);
    let found = (0..1_000)
        .filter(|_| {
            let (a, b) = paired_runs(&mut rng, Noise::Normal, 10, 3.0);
            paired(&a, &b).expect("pairs").verdict() == Verdict::Higher
        })
        .count();
    assert!(
        found >= 900,
        "a difference of 3 noise units found {found} times of 1,000"
    );
    let lower = paired(
        &[5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    )
    .expect("pairs");
    assert_eq!(lower.verdict(), Verdict::Lower);
    assert_eq!(lower.estimate, -4.0);
}

#[test]
fn the_confidence_is_the_exact_one_for_the_repeats() {
    let seq = |n: usize| (0..n).map(|i| i as f64).collect::<Vec<_>>();
    let conf = |n: usize| {
        let (a, b) = (vec![0.0; n], seq(n));
        paired(&a, &b)
            .expect("pairs")
            .interval
            .map(|i| i.confidence)
    };
    assert_eq!(conf(1), None, "one repeat: no interval");
    assert_eq!(conf(4), None, "four repeats reach 87.5% only");
    assert_eq!(conf(5), Some(1.0 - 2.0 / 32.0));
    assert_eq!(conf(6), Some(1.0 - 2.0 / 64.0));
    // Nine: k = 2 gives 1 - 2 * 10/512 = 96.1%; k = 3 would give 82%.
    let nine = paired(&[0.0; 9], &seq(9))
        .expect("pairs")
        .interval
        .expect("an interval");
    assert_eq!((nine.low, nine.high), (1.0, 7.0));
    assert!((nine.confidence - (1.0 - 20.0 / 512.0)).abs() < 1e-12);
    // Three against three reach 1 - 2/20 = 90% only; four against four 1 - 2/70.
    let three = shift(&[0.0, 1.0, 2.0], &[5.0, 6.0, 7.0]).expect("both");
    assert_eq!((three.interval, three.estimate), (None, 5.0));
    let four = shift(&[0.0, 1.0, 2.0, 3.0], &[5.0, 6.0, 7.0, 8.0]).expect("both");
    let i = four.interval.expect("97.1%");
    assert!(
        (i.confidence - (1.0 - 2.0 / 70.0)).abs() < 1e-12,
        "{}",
        i.confidence
    );
    assert_eq!((i.low, i.high, four.estimate), (2.0, 8.0, 5.0));
}

#[test]
fn the_mann_whitney_distribution_counts_the_orderings() {
    // As counts of the C(m+n, m) orderings: small cases by hand, symmetric, whole.
    let counts = |m: usize, n: usize, all: f64| -> Vec<f64> {
        mann_whitney_pmf(m, n)
            .iter()
            .map(|p| (p * all).round())
            .collect()
    };
    assert_eq!(counts(1, 1, 2.0), [1.0, 1.0]);
    assert_eq!(counts(2, 2, 6.0), [1.0, 1.0, 2.0, 1.0, 1.0]);
    let c = counts(5, 5, 252.0);
    assert_eq!(c.iter().sum::<f64>(), 252.0);
    assert_eq!(&c[..4], &[1.0, 1.0, 2.0, 3.0]);
    assert!(c.iter().zip(c.iter().rev()).all(|(x, y)| x == y));
    let big = mann_whitney_pmf(100, 100);
    assert!(big.iter().all(|p| *p >= 0.0));
    assert!((big.iter().sum::<f64>() - 1.0).abs() < 1e-9);
}

#[test]
fn ties_and_nans() {
    let zero = paired(&[0.0; 6], &[0.0; 6]).expect("pairs");
    assert_eq!(
        zero.verdict(),
        Verdict::NoDifference,
        "no errors in either arm"
    );
    let with_nan = paired(&[1.0, f64::NAN, 1.0], &[2.0, 2.0, 2.0]).expect("two pairs");
    assert_eq!(with_nan.repeats, 2);
    assert_eq!(paired(&[f64::NAN], &[1.0]), None);
    assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), Some(2.5));
    assert_eq!(median(&[]), None);
}

#[test]
fn a_line_through_costs_at_several_rates() {
    let line = Line::fit(&[(100.0, 30.0), (200.0, 32.0), (400.0, 36.0)]).expect("three rates");
    assert!((line.intercept - 28.0).abs() < 1e-9 && (line.slope - 0.02).abs() < 1e-12);
    assert_eq!(Line::fit(&[(100.0, 30.0), (100.0, 31.0)]), None, "one rate");
    assert_eq!(Line::fit(&[(100.0, 30.0)]), None);
    assert_eq!(Line::fit(&[]), None);
}
