//! joblib's second classic use, done right: a hyperparameter grid search with k-fold
//! cross-validation, every (penalty, C) combination one `delayed` task.
//!
//! Model: multinomial logistic regression from `smartcore` (L-BFGS), on the iris data set that
//! smartcore ships (150 samples, 4 features, 3 classes). Grid: penalty ∈ {none, L2} × inverse
//! regularisation strength C ∈ {0.001 … 100} (smartcore's `alpha` = 1/C; with no penalty C has no
//! effect, so that penalty is evaluated once). Features are standardised inside each fold with the
//! training fold's statistics (no leakage), folds are stratified by a fixed shuffle.
//!
//! Run: `cargo run --release --example grid_search` (threads), or
//! `cargo run --release --features processes --example grid_search -- --backend processes`
//! (each combination in a worker process: the tasks then take only `(penalty, C)`, and each
//! worker loads the data set once).

use parjob::{delayed, Parallel};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

const FOLDS: usize = 5;

#[derive(Clone, Copy, Debug)]
enum Penalty {
    None,
    L2,
}

struct Data {
    rows: Vec<Vec<f64>>,
    labels: Vec<i32>,
}

/// Iris, shuffled deterministically (the file is sorted by class, so unshuffled folds would hold
/// unseen classes).
fn load_iris() -> Data {
    let iris = smartcore::dataset::iris::load_dataset();
    let mut order: Vec<usize> = (0..iris.num_samples).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    let f = iris.num_features;
    Data {
        rows: order
            .iter()
            .map(|&i| {
                iris.data[i * f..(i + 1) * f]
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect()
            })
            .collect(),
        labels: order.iter().map(|&i| iris.target[i] as i32).collect(),
    }
}

/// Mean and standard deviation of each feature over `rows`.
fn fit_scaler(rows: &[&Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() as f64;
    let width = rows[0].len();
    let mean: Vec<f64> = (0..width)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let std = (0..width)
        .map(|j| {
            (rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n)
                .sqrt()
                .max(1e-12)
        })
        .collect();
    (mean, std)
}

fn scaled(rows: &[&Vec<f64>], (mean, std): &(Vec<f64>, Vec<f64>)) -> DenseMatrix<f64> {
    let rows: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(j, v)| (v - mean[j]) / std[j])
                .collect()
        })
        .collect();
    DenseMatrix::from_2d_vec(&rows).expect("rectangular data")
}

/// Mean k-fold cross-validated accuracy of one hyperparameter combination.
fn cross_validate(data: &Data, penalty: Penalty, c: f64) -> f64 {
    let n = data.rows.len();
    let mut total = 0.0;
    for fold in 0..FOLDS {
        let is_test = |i: &usize| i % FOLDS == fold;
        let train: Vec<usize> = (0..n).filter(|i| !is_test(i)).collect();
        let test: Vec<usize> = (0..n).filter(is_test).collect();
        let train_rows: Vec<&Vec<f64>> = train.iter().map(|&i| &data.rows[i]).collect();
        let test_rows: Vec<&Vec<f64>> = test.iter().map(|&i| &data.rows[i]).collect();
        let scaler = fit_scaler(&train_rows);
        let x_train = scaled(&train_rows, &scaler);
        let y_train: Vec<i32> = train.iter().map(|&i| data.labels[i]).collect();
        let alpha = match penalty {
            Penalty::None => 0.0,
            Penalty::L2 => 1.0 / c,
        };
        let params = LogisticRegressionParameters::default().with_alpha(alpha);
        let model =
            LogisticRegression::fit(&x_train, &y_train, params).expect("logistic regression fits");
        let predicted = model
            .predict(&scaled(&test_rows, &scaler))
            .expect("prediction");
        let correct = test
            .iter()
            .zip(&predicted)
            .filter(|(&i, &p)| data.labels[i] == p)
            .count();
        total += correct as f64 / test.len() as f64;
    }
    total / FOLDS as f64
}

/// The process backend's task: plain arguments in, the score out. The data set is loaded once
/// per worker process, on its first task.
#[cfg(feature = "processes")]
fn cross_validate_in_worker(l2: bool, c: f64) -> f64 {
    static DATA: std::sync::OnceLock<Data> = std::sync::OnceLock::new();
    let penalty = if l2 { Penalty::L2 } else { Penalty::None };
    cross_validate(DATA.get_or_init(load_iris), penalty, c)
}

fn backend_from_args() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => "threads".to_owned(),
        [flag, value] if flag == "--backend" && (value == "threads" || value == "processes") => {
            value.clone()
        }
        _ => {
            eprintln!("usage: grid_search [--backend threads|processes]");
            std::process::exit(2);
        }
    }
}

fn main() {
    // First in `main`: in a worker process this call serves tasks and never returns.
    #[cfg(feature = "processes")]
    parjob::processes::init();
    let backend = backend_from_args();
    let data = load_iris();
    let strengths = [0.001, 0.01, 0.1, 1.0, 10.0, 100.0];
    let mut grid = vec![(Penalty::None, f64::INFINITY)];
    grid.extend(strengths.iter().map(|&c| (Penalty::L2, c)));

    let scores: Vec<f64> = if backend == "processes" {
        #[cfg(feature = "processes")]
        {
            // The same call for worker processes: each combination runs in one; the task holds a
            // function pointer (`delayed_fn!`), which is how a function crosses to another process.
            Parallel::new()
                .n_jobs(-1)
                .verbose(5)
                .backend(parjob::Backend::Processes)
                .run_in_processes(grid.iter().map(|&(penalty, c)| {
                    parjob::delayed_fn!(cross_validate_in_worker(matches!(penalty, Penalty::L2), c))
                }))
        }
        #[cfg(not(feature = "processes"))]
        {
            eprintln!("--backend processes needs `--features processes`");
            std::process::exit(2);
        }
    } else {
        // Each combination is one task; tasks borrow `data` (no copies, no Arc).
        Parallel::new().n_jobs(-1).verbose(5).run(
            grid.iter()
                .map(|&(penalty, c)| parjob::delayed!(cross_validate(&data, penalty, c))),
        )
    };

    println!("backend: {backend}");
    println!("{:<8} {:>8}  {}-fold CV accuracy", "penalty", "C", FOLDS);
    for (&(penalty, c), score) in grid.iter().zip(&scores) {
        println!("{:<8} {:>8} {:>8.4}", format!("{penalty:?}"), c, score);
    }
    let best = (0..grid.len())
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .expect("a non-empty grid");
    let (penalty, c) = grid[best];
    println!(
        "best: penalty={penalty:?} C={c} accuracy={:.4}",
        scores[best]
    );
    // `delayed(f)(x)` for a one-argument closure: the L2 path alone, again in parallel.
    let by_c: Vec<f64> = Parallel::new().run(
        strengths
            .iter()
            .map(|&c| delayed(|c: f64| cross_validate(&data, Penalty::L2, c))(c)),
    );
    assert_eq!(by_c.len(), strengths.len());
}
