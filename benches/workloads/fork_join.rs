//! Fork-join workloads: a `join` at every level, no sequential cutoff unless the algorithm has one.

use super::{static_split, Contender, Pools, Workload};

// ---------------------------------------------------------------- the shape of a join

/// `join` without a scheduler: A, then B, on the calling thread, inlined into the recursion. The
/// `join-shape` contender runs each workload's fork-join recursion through it. The sequential
/// code is the same recursion with plain calls, where the compiler turns the last recursive call
/// of each level into a loop; a recursion through any `join` keeps both calls (its result is
/// combined after B returns), so on a walk limited by memory latency it executes about twice the
/// instructions between two cache misses, and fewer misses overlap. This row measures that cost,
/// which no scheduler can remove, apart from what the scheduler adds.
#[inline(always)]
pub fn join_shape<RA, RB>(a: impl FnOnce() -> RA, b: impl FnOnce() -> RB) -> (RA, RB) {
    let ra = a();
    (ra, b())
}

// ---------------------------------------------------------------- fib

pub fn fib_seq(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib_seq(n - 1) + fib_seq(n - 2)
    }
}

pub fn fib_parjob(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = parjob::join(|| fib_parjob(n - 1), || fib_parjob(n - 2));
    a + b
}

pub fn fib_join_shape(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = join_shape(|| fib_join_shape(n - 1), || fib_join_shape(n - 2));
    a + b
}

pub fn fib_rayon(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = rayon::join(|| fib_rayon(n - 1), || fib_rayon(n - 2));
    a + b
}

pub fn fib_chili(s: &mut chili::Scope<'_>, n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = s.join(|s| fib_chili(s, n - 1), |s| fib_chili(s, n - 2));
    a + b
}

pub struct Fib(pub u64);

impl Workload for Fib {
    fn name(&self) -> String {
        format!("fib({})", self.0)
    }
    fn run(&mut self, contender: Contender, pools: &Pools) -> Option<u64> {
        let n = std::hint::black_box(self.0);
        Some(match contender {
            Contender::Sequential => fib_seq(n),
            Contender::Parjob => pools.parjob.install(|| fib_parjob(n)),
            Contender::Rayon => pools.rayon.install(|| fib_rayon(n)),
            Contender::Chili => fib_chili(&mut pools.chili.borrow_mut().scope(), n),
            Contender::StaticSplit if pools.threads == 2 => {
                let (a, b) = static_split(|| fib_seq(n - 1), || fib_seq(n - 2));
                a + b
            }
            Contender::StaticSplit => return None,
            Contender::JoinShape if pools.threads == 1 => fib_join_shape(n),
            Contender::JoinShape => return None,
        })
    }
}

// ---------------------------------------------------------------- binary tree sum

pub struct Node {
    pub value: u64,
    pub left: Option<Box<Node>>,
    pub right: Option<Box<Node>>,
}

impl Drop for Node {
    // Iterative-enough drop: the default recursive drop is fine at depth 23, but do it on the
    // caller's thread explicitly so it never runs inside a timed region by accident.
    fn drop(&mut self) {}
}

/// Children allocated before their parent (what `Box::new(Node { left: build(), .. })` does).
pub fn build_children_first(depth: u32, next: &mut u64) -> Option<Box<Node>> {
    if depth == 0 {
        return None;
    }
    let left = build_children_first(depth - 1, next);
    let right = build_children_first(depth - 1, next);
    *next += 1;
    Some(Box::new(Node {
        value: *next,
        left,
        right,
    }))
}

/// Parent allocated before its children (pre-order allocation).
pub fn build_parent_first(depth: u32, next: &mut u64) -> Option<Box<Node>> {
    if depth == 0 {
        return None;
    }
    *next += 1;
    let mut node = Box::new(Node {
        value: *next,
        left: None,
        right: None,
    });
    node.left = build_parent_first(depth - 1, next);
    node.right = build_parent_first(depth - 1, next);
    Some(node)
}

pub fn sum_seq(node: &Option<Box<Node>>) -> u64 {
    match node {
        None => 0,
        Some(n) => n.value + sum_seq(&n.left) + sum_seq(&n.right),
    }
}

pub fn sum_parjob(node: &Option<Box<Node>>) -> u64 {
    match node {
        None => 0,
        Some(n) => {
            let (a, b) = parjob::join(|| sum_parjob(&n.left), || sum_parjob(&n.right));
            n.value + a + b
        }
    }
}

pub fn sum_join_shape(node: &Option<Box<Node>>) -> u64 {
    match node {
        None => 0,
        Some(n) => {
            let (a, b) = join_shape(|| sum_join_shape(&n.left), || sum_join_shape(&n.right));
            n.value + a + b
        }
    }
}

pub fn sum_rayon(node: &Option<Box<Node>>) -> u64 {
    match node {
        None => 0,
        Some(n) => {
            let (a, b) = rayon::join(|| sum_rayon(&n.left), || sum_rayon(&n.right));
            n.value + a + b
        }
    }
}

pub fn sum_chili(s: &mut chili::Scope<'_>, node: &Option<Box<Node>>) -> u64 {
    match node {
        None => 0,
        Some(n) => {
            let (a, b) = s.join(|s| sum_chili(s, &n.left), |s| sum_chili(s, &n.right));
            n.value + a + b
        }
    }
}

/// Frees a tree without recursion (its `Drop` is a no-op, so children are detached by hand).
pub fn free_tree(root: Option<Box<Node>>) {
    let mut stack: Vec<Box<Node>> = root.into_iter().collect();
    while let Some(mut node) = stack.pop() {
        stack.extend(node.left.take());
        stack.extend(node.right.take());
    }
}

pub struct TreeSum {
    pub depth: u32,
    pub parent_first: bool,
    tree: Option<Box<Node>>,
}

impl TreeSum {
    pub fn new(depth: u32, parent_first: bool) -> Self {
        TreeSum {
            depth,
            parent_first,
            tree: None,
        }
    }
}

impl Drop for TreeSum {
    fn drop(&mut self) {
        free_tree(self.tree.take());
    }
}

impl Workload for TreeSum {
    fn name(&self) -> String {
        let order = if self.parent_first {
            "parent-first"
        } else {
            "children-first"
        };
        format!("tree-sum 2^{} {order}", self.depth)
    }
    fn setup(&mut self) {
        // Built once: summing does not change the tree.
        if self.tree.is_none() {
            let mut next = 0;
            self.tree = if self.parent_first {
                build_parent_first(self.depth, &mut next)
            } else {
                build_children_first(self.depth, &mut next)
            };
        }
    }
    fn run(&mut self, contender: Contender, pools: &Pools) -> Option<u64> {
        let tree = &self.tree;
        Some(match contender {
            Contender::Sequential => sum_seq(tree),
            Contender::Parjob => pools.parjob.install(|| sum_parjob(tree)),
            Contender::Rayon => pools.rayon.install(|| sum_rayon(tree)),
            Contender::Chili => sum_chili(&mut pools.chili.borrow_mut().scope(), tree),
            Contender::StaticSplit if pools.threads == 2 => {
                let root = tree.as_ref().expect("tree");
                let (a, b) = static_split(|| sum_seq(&root.left), || sum_seq(&root.right));
                root.value + a + b
            }
            Contender::StaticSplit => return None,
            Contender::JoinShape if pools.threads == 1 => sum_join_shape(tree),
            Contender::JoinShape => return None,
        })
    }
}

// ---------------------------------------------------------------- quicksort

const INSERTION_CUTOFF: usize = 32;

fn insertion_sort(v: &mut [u64]) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && v[j - 1] > v[j] {
            v.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Lomuto partition around the median of three; returns the pivot's final index.
fn partition(v: &mut [u64]) -> usize {
    let len = v.len();
    let (a, b, c) = (0, len / 2, len - 1);
    let median = if (v[a] <= v[b]) == (v[b] <= v[c]) {
        b
    } else if (v[b] <= v[a]) == (v[a] <= v[c]) {
        a
    } else {
        c
    };
    v.swap(median, len - 1);
    let pivot = v[len - 1];
    let mut store = 0;
    for i in 0..len - 1 {
        if v[i] < pivot {
            v.swap(i, store);
            store += 1;
        }
    }
    v.swap(store, len - 1);
    store
}

pub fn quicksort_seq(v: &mut [u64]) {
    if v.len() <= INSERTION_CUTOFF {
        return insertion_sort(v);
    }
    let mid = partition(v);
    let (lo, hi) = v.split_at_mut(mid);
    quicksort_seq(lo);
    quicksort_seq(&mut hi[1..]);
}

pub fn quicksort_parjob(v: &mut [u64]) {
    if v.len() <= INSERTION_CUTOFF {
        return insertion_sort(v);
    }
    let mid = partition(v);
    let (lo, hi) = v.split_at_mut(mid);
    parjob::join(|| quicksort_parjob(lo), || quicksort_parjob(&mut hi[1..]));
}

pub fn quicksort_join_shape(v: &mut [u64]) {
    if v.len() <= INSERTION_CUTOFF {
        return insertion_sort(v);
    }
    let mid = partition(v);
    let (lo, hi) = v.split_at_mut(mid);
    join_shape(
        || quicksort_join_shape(lo),
        || quicksort_join_shape(&mut hi[1..]),
    );
}

pub fn quicksort_rayon(v: &mut [u64]) {
    if v.len() <= INSERTION_CUTOFF {
        return insertion_sort(v);
    }
    let mid = partition(v);
    let (lo, hi) = v.split_at_mut(mid);
    rayon::join(|| quicksort_rayon(lo), || quicksort_rayon(&mut hi[1..]));
}

pub fn quicksort_chili(s: &mut chili::Scope<'_>, v: &mut [u64]) {
    if v.len() <= INSERTION_CUTOFF {
        return insertion_sort(v);
    }
    let mid = partition(v);
    let (lo, hi) = v.split_at_mut(mid);
    s.join(
        |s| quicksort_chili(s, lo),
        |s| quicksort_chili(s, &mut hi[1..]),
    );
}

/// Order-sensitive checksum: equal only if the slice is the same sequence.
pub fn checksum(v: &[u64]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x).wrapping_mul(0x100_0000_01b3)
    })
}

pub struct Quicksort {
    pub len: usize,
    input: Vec<u64>,
    work: Vec<u64>,
}

impl Quicksort {
    pub fn new(len: usize) -> Self {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let input = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect();
        Quicksort {
            len,
            input,
            work: Vec::new(),
        }
    }
}

impl Workload for Quicksort {
    fn name(&self) -> String {
        format!("quicksort {}", human(self.len))
    }
    fn setup(&mut self) {
        self.work.clear();
        self.work.extend_from_slice(&self.input);
    }
    fn run(&mut self, contender: Contender, pools: &Pools) -> Option<u64> {
        let v = &mut self.work[..];
        match contender {
            Contender::Sequential => quicksort_seq(v),
            Contender::Parjob => pools.parjob.install(|| quicksort_parjob(v)),
            Contender::Rayon => pools.rayon.install(|| quicksort_rayon(v)),
            Contender::Chili => quicksort_chili(&mut pools.chili.borrow_mut().scope(), v),
            Contender::StaticSplit if pools.threads == 2 => {
                let mid = partition(v);
                let (lo, hi) = v.split_at_mut(mid);
                static_split(|| quicksort_seq(lo), || quicksort_seq(&mut hi[1..]));
            }
            Contender::StaticSplit => return None,
            Contender::JoinShape if pools.threads == 1 => quicksort_join_shape(v),
            Contender::JoinShape => return None,
        }
        Some(0)
    }
    fn checksum(&mut self, _returned: u64) -> u64 {
        checksum(&self.work)
    }
}

pub fn human(n: usize) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

// ---------------------------------------------------------------- call latency

/// A `join` of two trivial closures called from outside the pool, `calls` times per run.
pub struct JoinLatency {
    pub calls: u64,
}

impl Workload for JoinLatency {
    fn name(&self) -> String {
        "join latency, 2 trivial tasks, outside caller (per call)".to_string()
    }
    fn calls_per_run(&self) -> u64 {
        self.calls
    }
    fn run(&mut self, contender: Contender, pools: &Pools) -> Option<u64> {
        // One `join` per call and no recursion: the sequential row is this workload's anchor.
        if (contender == Contender::StaticSplit && pools.threads != 2)
            || contender == Contender::JoinShape
        {
            return None;
        }
        let mut total = 0u64;
        for i in 0..self.calls {
            let i = std::hint::black_box(i);
            let (a, b) = match contender {
                Contender::Sequential => (i, i + 1),
                Contender::Parjob => pools.parjob.join(|| i, || i + 1),
                Contender::Rayon => pools.rayon.join(|| i, || i + 1),
                Contender::Chili => pools.chili.borrow_mut().scope().join(|_| i, |_| i + 1),
                Contender::StaticSplit => static_split(|| i, || i + 1),
                Contender::JoinShape => unreachable!("returned above"),
            };
            total = total.wrapping_add(a + b);
        }
        Some(total)
    }
}
