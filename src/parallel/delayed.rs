//! `delayed`: a function call captured now and run later, as a `Parallel` task.
//!
//! A [`Delayed<F, A>`] holds a callable `F` and its already-evaluated arguments `A` (a tuple).
//! [`Apply`] is what runs it: it is implemented for every `FnOnce` of 0 to 8 arguments over the
//! matching tuple, so `delayed(f)(x)`, `delayed!(f(a, b, &c))` and `Delayed::new(|| ...)` all
//! produce the same type, with no boxing.

/// A deferred call: a callable plus its arguments, evaluated when the `Delayed` was made.
///
/// Make one with [`delayed`], the [`delayed!`](crate::delayed!) macro, or [`Delayed::new`]; run
/// many with [`Parallel`](crate::Parallel), or one with [`Delayed::call`].
///
/// Tasks of different closure types can share one input by boxing them:
///
/// ```
/// use parjob::{Delayed, Parallel};
/// type Boxed = Box<dyn FnOnce() -> u32 + Send>;
/// let tasks: Vec<Delayed<Boxed>> = vec![
///     Delayed::new(Box::new(|| 1u32) as Boxed),
///     Delayed::new(Box::new(|| 2u32) as Boxed),
/// ];
/// assert_eq!(Parallel::new().run(tasks), vec![1, 2]);
/// ```
#[must_use = "a Delayed does nothing until it is run"]
pub struct Delayed<F, A = ()> {
    f: F,
    args: A,
}

impl<F> Delayed<F, ()> {
    /// Wraps a closure that takes no arguments.
    ///
    /// ```
    /// let data = vec![1, 2, 3];
    /// let task = parjob::Delayed::new(|| data.iter().sum::<i32>());
    /// assert_eq!(task.call(), 6);
    /// ```
    pub fn new<R>(f: F) -> Self
    where
        F: FnOnce() -> R,
    {
        Delayed { f, args: () }
    }
}

impl<F, A> Delayed<F, A> {
    /// A call of `f` with the argument tuple `args` (what the `delayed!` macro expands to).
    ///
    /// ```
    /// let task = parjob::Delayed::with_args(|a: i32, b: i32| a * b, (6, 7));
    /// assert_eq!(task.call(), 42);
    /// ```
    pub fn with_args(f: F, args: A) -> Self
    where
        F: Apply<A>,
    {
        Delayed { f, args }
    }

    /// Runs the call now, on this thread.
    ///
    /// ```
    /// assert_eq!(parjob::delayed(|x: u8| x + 1)(1).call(), 2);
    /// ```
    #[inline]
    pub fn call(self) -> F::Output
    where
        F: Apply<A>,
    {
        self.f.apply(self.args)
    }
}

impl<F, A> Delayed<F, A> {
    /// The callable and the argument tuple (the process backend sends them separately).
    #[cfg(feature = "processes")]
    pub(crate) fn into_parts(self) -> (F, A) {
        (self.f, self.args)
    }
}

impl<F, A: std::fmt::Debug> std::fmt::Debug for Delayed<F, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayed")
            .field("f", &std::any::type_name::<F>())
            .field("args", &self.args)
            .finish()
    }
}

/// Calls `self` with the argument tuple `Args`. Implemented for every `FnOnce` of 0 to 8
/// arguments; you do not implement it yourself.
///
/// ```
/// use parjob::Apply;
/// assert_eq!((|a: i32, b: i32| a - b).apply((5, 3)), 2);
/// ```
pub trait Apply<Args> {
    /// What the call returns.
    type Output;
    /// Makes the call.
    fn apply(self, args: Args) -> Self::Output;
}

macro_rules! impl_apply {
    ($($arg:ident),*) => {
        impl<Func, Ret, $($arg),*> Apply<($($arg,)*)> for Func
        where
            Func: FnOnce($($arg),*) -> Ret,
        {
            type Output = Ret;
            #[inline]
            #[allow(non_snake_case)]
            fn apply(self, ($($arg,)*): ($($arg,)*)) -> Ret {
                self($($arg),*)
            }
        }
    };
}

/// Invokes `$impl!(A1, …, An)` for every task arity parjob supports (0 to 8 arguments): one
/// list for [`Apply`] and for the process backend's function pointers.
macro_rules! for_each_arity {
    ($impl:ident) => {
        $impl!();
        $impl!(A1);
        $impl!(A1, A2);
        $impl!(A1, A2, A3);
        $impl!(A1, A2, A3, A4);
        $impl!(A1, A2, A3, A4, A5);
        $impl!(A1, A2, A3, A4, A5, A6);
        $impl!(A1, A2, A3, A4, A5, A6, A7);
        $impl!(A1, A2, A3, A4, A5, A6, A7, A8);
    };
}
#[cfg_attr(not(feature = "processes"), allow(unused_imports))]
pub(crate) use for_each_arity;

for_each_arity!(impl_apply);

/// joblib's `delayed(f)(x)`: captures a one-argument call of `f` as a task.
///
/// The argument is evaluated now; the call runs later, on whichever thread the `Parallel` call
/// picks. `f` may be a function, or a closure (which must be `Copy` to be used once per item, as
/// closures that capture only references and `Copy` values are). For more arguments, use
/// [`delayed!`](crate::delayed!).
///
/// ```
/// use parjob::{delayed, Parallel};
/// fn calcular_raiz_cuadrada(n: f64) -> f64 { n.sqrt() }
/// let numeros = [1.0, 4.0, 9.0, 16.0];
/// let resultado: Vec<f64> = Parallel::new().n_jobs(2)
///     .run(numeros.iter().map(|&n| delayed(calcular_raiz_cuadrada)(n)));
/// assert_eq!(resultado, vec![1.0, 2.0, 3.0, 4.0]);
/// ```
pub fn delayed<F, X, R>(f: F) -> impl FnOnce(X) -> Delayed<F, (X,)>
where
    F: FnOnce(X) -> R,
{
    move |x| Delayed { f, args: (x,) }
}

/// [`delayed`] for a function *pointer*: `delayed_fn(f)(x)` is a task that calls `f` through a
/// `fn(X) -> R`. A function item or a closure that captures nothing coerces to the pointer here; a
/// closure with captures does not (a compile error).
///
/// This is the spelling of tasks sent to worker processes (`run_in_processes` and its
/// counterparts take a `processes::ProcessFn`, which only a pointer is): the
/// worker runs the same executable and is handed the function as its offset in it. On threads
/// it runs like any other task. For more arguments, use [`delayed_fn!`](crate::delayed_fn!).
///
/// ```
/// use parjob::{delayed_fn, Delayed, Parallel};
/// fn square(x: u64) -> u64 { x * x }
/// let task: Delayed<fn(u64) -> u64, (u64,)> = delayed_fn(square)(3);
/// assert_eq!(task.call(), 9);
/// let out = Parallel::new().n_jobs(2).run((0..4u64).map(|x| delayed_fn(|x: u64| x + 1)(x)));
/// assert_eq!(out, [1, 2, 3, 4]);
/// ```
pub fn delayed_fn<X, R>(f: fn(X) -> R) -> impl FnOnce(X) -> Delayed<fn(X) -> R, (X,)> {
    move |x| Delayed { f, args: (x,) }
}

/// `delayed_fn!(f(a, b, &c))`: [`delayed!`](crate::delayed!) with the callee turned into a
/// function pointer (`fn(_, _, _) -> _`, one `_` per argument), the spelling of multi-argument
/// tasks for worker processes (see [`delayed_fn`]). The callee is a path or a parenthesised
/// expression; it must be a function or a closure that captures nothing.
///
/// ```
/// use parjob::{delayed_fn, Delayed};
/// fn add(a: u64, b: u64) -> u64 { a + b }
/// let task: Delayed<fn(u64, u64) -> u64, (u64, u64)> = delayed_fn!(add(2, 3));
/// assert_eq!(task.call(), 5);
/// assert_eq!(delayed_fn!((|a: i32, b: i32| a * b)(4, 5)).call(), 20);
/// ```
///
/// A closure with captures has no pointer form:
///
/// ```compile_fail,E0308
/// let k = 3u64;
/// let task = parjob::delayed_fn!((move |a: u64| a + k)(2));
/// ```
#[macro_export]
macro_rules! delayed_fn {
    ($($f:ident)::+ ( $($arg:expr),* $(,)? )) => {
        $crate::delayed_fn!(@pointer ($($f)::+) ($($arg),*))
    };
    (($f:expr) ( $($arg:expr),* $(,)? )) => {
        $crate::delayed_fn!(@pointer ($f) ($($arg),*))
    };
    (@pointer ($f:expr) ($($arg:expr),*)) => {{
        let function: fn($($crate::delayed_fn!(@infer $arg)),*) -> _ = $f;
        $crate::Delayed::with_args(function, ($($arg,)*))
    }};
    (@infer $arg:expr) => { _ };
}

/// `delayed!(f(a, b, &c))`: captures any call expression as a [`Delayed`] task. The arguments
/// are evaluated now (in order), the call is deferred.
///
/// The callee is a path (`f`, `module::f`) or a parenthesised expression (`(closure)(x)`).
///
/// ```
/// use parjob::{delayed, Parallel};
/// fn score(weights: &[f64], scale: f64, offset: f64) -> f64 {
///     weights.iter().sum::<f64>() * scale + offset
/// }
/// let weights = vec![1.0, 2.0, 3.0];
/// let out = Parallel::new()
///     .run((0..4).map(|i| delayed!(score(&weights, i as f64, 0.5))));
/// assert_eq!(out, vec![0.5, 6.5, 12.5, 18.5]);
///
/// let add = |a: i32, b: i32| a + b;
/// assert_eq!(delayed!((add)(2, 3)).call(), 5);
/// ```
#[macro_export]
macro_rules! delayed {
    ($($f:ident)::+ ( $($arg:expr),* $(,)? )) => {
        $crate::Delayed::with_args($($f)::+, ($($arg,)*))
    };
    (($f:expr) ( $($arg:expr),* $(,)? )) => {
        $crate::Delayed::with_args($f, ($($arg,)*))
    };
}
