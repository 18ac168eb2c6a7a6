//! Which functions a task sent to worker processes may call: function pointers only.

use crate::Apply;

/// A function a worker process can call: a function pointer `fn(A1, …, An) -> R` of 0 to 8
/// arguments. Sealed; it is what `run_in_processes` and its counterparts take as a task's
/// function.
///
/// A pointer is the one kind of function value a worker can be handed faithfully: the worker runs
/// the same executable, so the parent sends the function's offset in it and the worker rebuilds
/// exactly the pointer the parent held. A closure cannot cross, not even one that captures only
/// zero-sized values: those values would have to be re-created in the worker without the code
/// that made them in the parent, and a library may rely on "whoever holds this token went through
/// my constructor" for its soundness. A capturing closure does not coerce to a pointer, so the
/// compiler rejects it.
///
/// Spell the task [`delayed_fn(f)(x)`](crate::delayed_fn()) or
/// [`delayed_fn!(f(a, b))`](crate::delayed_fn!): a function item or a closure that captures
/// nothing coerces to the pointer there.
///
/// ```
/// use parjob::processes::ProcessFn;
/// fn square(x: u64) -> u64 { x * x }
/// fn takes<F: ProcessFn<(u64,), Output = u64>>(_: F) {}
/// takes(square as fn(u64) -> u64);
/// ```
///
/// A function item keeps its own zero-sized type unless it is coerced, and is refused:
///
/// ```compile_fail,E0277
/// use parjob::processes::ProcessFn;
/// fn square(x: u64) -> u64 { x * x }
/// fn takes<F: ProcessFn<(u64,), Output = u64>>(_: F) {}
/// takes(square);
/// ```
#[diagnostic::on_unimplemented(
    message = "a task sent to worker processes must call a function pointer, not `{Self}`",
    label = "not a `fn` pointer",
    note = "spell the task `delayed_fn(f)(x)` or `delayed_fn!(f(a, b))`: a function or a closure \
            that captures nothing becomes a pointer there; a closure with captures cannot be \
            sent to another process"
)]
pub trait ProcessFn<Args>: Apply<Args> + Copy + Send + Sync + 'static + sealed::Pointer {}

pub(crate) mod sealed {
    /// What the process backend does with a task's function; private, so no type outside this
    /// crate can be a [`ProcessFn`](super::ProcessFn).
    pub trait Pointer: Sized {
        /// The function's address in this process.
        fn address(self) -> usize;

        /// The function pointer at `address`.
        ///
        /// # Safety
        /// `address` is the address of a function of exactly this pointer type, in this
        /// process: the value [`address`](Pointer::address) returned for such a pointer,
        /// carried to this process as an offset within the same loaded executable.
        unsafe fn from_address(address: usize) -> Self;
    }
}

macro_rules! impl_process_fn {
    ($($arg:ident),*) => {
        impl<Ret: 'static, $($arg: 'static),*> sealed::Pointer for fn($($arg),*) -> Ret {
            #[inline]
            fn address(self) -> usize {
                self as usize
            }

            #[inline]
            unsafe fn from_address(address: usize) -> Self {
                // SAFETY: the caller guarantees that `address` is the address of a function of
                // exactly this signature in this process, which is what a value of this pointer
                // type is; a `fn` pointer and a `usize` have the same size.
                unsafe { std::mem::transmute::<usize, Self>(address) }
            }
        }

        impl<Ret: 'static, $($arg: 'static),*> ProcessFn<($($arg,)*)> for fn($($arg),*) -> Ret {}
    };
}

crate::parallel::delayed::for_each_arity!(impl_process_fn);
