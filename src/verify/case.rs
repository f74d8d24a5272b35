//! Case identities: what one check was run on, as `op(k=v,...)@backend`.
//!
//! A case is built from typed parts (an `Op`, parameters keyed by `Key`, a
//! `BackendKind`) and has exactly one text form, `id()`: the parameters
//! always in `Key` order, whatever order they were given in. That one string
//! is the row of the `verify` table, the JSON `case` field and what
//! `--filter` (and `LOCKSTEP_FILTER` in the tests) matches against, as
//! llama.cpp's test-backend-ops names and filters its op cases.

use crate::error::{Error, Result};
use crate::ident::{AttnPath, BackendKind, Numerics};
use serde::{Deserialize, Serialize};

/// What a check ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// q, k, v of every layer from the same inputs (op level).
    Qkv,
    /// Every layer's output and the logits (teacher-forced).
    Layers,
    /// Every row's logits of one teacher-forced pass.
    Logits,
    /// Greedy generations.
    Greedy,
    /// Decode steps' logits against the teacher-forced pass's rows.
    Decode,
    /// A golden generation against its committed snapshot.
    Golden,
    /// The CPU reference against a transformers reference file.
    Transformers,
    /// The fused path's bits under changes of layout alone (row offset in
    /// a batch, KV-cache capacity, allocator state).
    Layout,
    /// Each sequence's decode steps in a batch against the same sequence
    /// alone (batch invariance).
    Batch,
    /// Simulated tensor parallelism's logits against one device's.
    TensorParallel,
}

impl Op {
    pub const ALL: [Op; 10] = [
        Op::Qkv,
        Op::Layers,
        Op::Logits,
        Op::Greedy,
        Op::Decode,
        Op::Golden,
        Op::Transformers,
        Op::Layout,
        Op::Batch,
        Op::TensorParallel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Qkv => "qkv",
            Op::Layers => "layers",
            Op::Logits => "logits",
            Op::Greedy => "greedy",
            Op::Decode => "decode",
            Op::Golden => "golden",
            Op::Transformers => "transformers",
            Op::Layout => "layout",
            Op::Batch => "batch",
            Op::TensorParallel => "tp",
        }
    }
}

/// A parameter of a case; the declaration order is the order in `id()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Preset,
    /// The dtype a transformers reference ran in.
    Dtype,
    Numerics,
    Path,
    /// CUDA's reduction mode.
    Mode,
    Tokens,
    /// The position of a single row (a decode step's q, k, v).
    Position,
    Steps,
    /// Sequences decoded together.
    Batch,
    /// Tensor-parallel ranks.
    Ranks,
    /// The all-reduce order of a tensor-parallel run.
    AllReduce,
    /// The backend a result is compared with, when not truth.
    Vs,
}

impl Key {
    pub const ALL: [Key; 12] = [
        Key::Preset,
        Key::Dtype,
        Key::Numerics,
        Key::Path,
        Key::Mode,
        Key::Tokens,
        Key::Position,
        Key::Steps,
        Key::Batch,
        Key::Ranks,
        Key::AllReduce,
        Key::Vs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Key::Preset => "preset",
            Key::Dtype => "dtype",
            Key::Numerics => "numerics",
            Key::Path => "path",
            Key::Mode => "mode",
            Key::Tokens => "tokens",
            Key::Position => "position",
            Key::Steps => "steps",
            Key::Batch => "batch",
            Key::Ranks => "ranks",
            Key::AllReduce => "allreduce",
            Key::Vs => "vs",
        }
    }
}

/// One case: an op, its parameters (at most one value per key) and the
/// backend it ran on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Case {
    pub op: Op,
    params: Vec<(Key, String)>,
    pub backend: BackendKind,
}

impl Case {
    pub fn new(op: Op, backend: BackendKind) -> Self {
        Case {
            op,
            params: Vec::new(),
            backend,
        }
    }

    /// Sets `key` (replacing an earlier value), keeping keys in order.
    pub fn with(mut self, key: Key, value: impl std::fmt::Display) -> Self {
        let value = value.to_string();
        match self.params.binary_search_by_key(&key, |p| p.0) {
            Ok(i) => self.params[i].1 = value,
            Err(i) => self.params.insert(i, (key, value)),
        }
        self
    }

    pub fn preset(self, preset: &str) -> Self {
        self.with(Key::Preset, preset)
    }
    pub fn numerics(self, n: Numerics) -> Self {
        self.with(Key::Numerics, n)
    }
    pub fn path(self, p: AttnPath) -> Self {
        self.with(Key::Path, p)
    }
    pub fn tokens(self, n: usize) -> Self {
        self.with(Key::Tokens, n)
    }

    pub fn get(&self, key: Key) -> Option<&str> {
        self.params
            .iter()
            .find(|p| p.0 == key)
            .map(|p| p.1.as_str())
    }

    /// `op(k=v,...)@backend`, keys in `Key` order.
    pub fn id(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{}={v}", k.name()))
            .collect();
        format!("{}({})@{}", self.op.name(), params.join(","), self.backend)
    }

    /// Parses an id written by `id()`.
    pub fn parse(id: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid(format!("case id `{id}`"), why.to_string());
        let (head, backend) = id.rsplit_once(")@").ok_or_else(|| bad("no `)@backend`"))?;
        let backend = BackendKind::ALL
            .into_iter()
            .find(|b| b.name() == backend)
            .ok_or_else(|| bad("unknown backend"))?;
        let (op, params) = head.split_once('(').ok_or_else(|| bad("no `(`"))?;
        let op = Op::ALL
            .into_iter()
            .find(|o| o.name() == op)
            .ok_or_else(|| bad("unknown op"))?;
        let mut case = Case::new(op, backend);
        for kv in params.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad("a parameter without `=`"))?;
            let key = Key::ALL
                .into_iter()
                .find(|x| x.name() == k)
                .ok_or_else(|| bad("unknown parameter"))?;
            if case.get(key).is_some() {
                return Err(bad("a parameter given twice"));
            }
            case = case.with(key, v);
        }
        if case.id() != id {
            return Err(bad("parameters out of order"));
        }
        Ok(case)
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id())
    }
}

impl From<Case> for String {
    fn from(c: Case) -> String {
        c.id()
    }
}

impl TryFrom<String> for Case {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Case::parse(&s)
    }
}

/// Which cases to run (`lockstep verify --filter`, `LOCKSTEP_FILTER` in the
/// tests): all, or those any pattern matches. A pattern is `TEXT`, `TEXT@B`
/// or `@B`: TEXT must occur in the id's `op(k=v,...)` part and B, when given,
/// must be the backend exactly (so `@mlx` is not `@mlx-gpu`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    patterns: Vec<(String, Option<String>)>,
}

impl Filter {
    pub fn all() -> Self {
        Filter::default()
    }

    pub fn new(patterns: impl IntoIterator<Item = String>) -> Self {
        Filter {
            patterns: patterns
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(|p| match p.rsplit_once('@') {
                    Some((head, backend)) => (head.to_string(), Some(backend.to_string())),
                    None => (p, None),
                })
                .collect(),
        }
    }

    /// From `LOCKSTEP_FILTER`: comma-separated patterns (unset: all).
    pub fn from_env() -> Self {
        let v = std::env::var("LOCKSTEP_FILTER").unwrap_or_default();
        Filter::new(v.split(',').map(str::to_string))
    }

    pub fn is_all(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn matches(&self, case: &Case) -> bool {
        let id = case.id();
        let head = id.rsplit_once(")@").map_or(id.as_str(), |(h, _)| h);
        self.is_all()
            || self.patterns.iter().any(|(text, backend)| {
                head.contains(text.as_str())
                    && backend.as_deref().is_none_or(|b| b == case.backend.name())
            })
    }

    /// Whether any case of `backend` could match: false when every pattern
    /// names another backend, so a job need not open this one at all.
    pub fn wants_backend(&self, backend: BackendKind) -> bool {
        self.is_all()
            || self
                .patterns
                .iter()
                .any(|(_, b)| b.as_deref().is_none_or(|b| b == backend.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_lists_parameters_in_key_order_whatever_the_order_given() {
        let a = Case::new(Op::Qkv, BackendKind::Cpu)
            .tokens(32)
            .numerics(Numerics::Bf16)
            .preset("tiny");
        assert_eq!(a.id(), "qkv(preset=tiny,numerics=bf16,tokens=32)@cpu");
        let b = Case::new(Op::Qkv, BackendKind::Cpu)
            .preset("tiny")
            .numerics(Numerics::Bf16)
            .tokens(32);
        assert_eq!(a, b);
    }

    #[test]
    fn ids_parse_back_and_malformed_ids_are_refused() {
        let c = Case::new(Op::Logits, BackendKind::Mlx)
            .preset("tiny-moe")
            .path(AttnPath::Fused)
            .with(Key::Vs, BackendKind::Cpu);
        assert_eq!(Case::parse(&c.id()).unwrap(), c);
        for bad in [
            "qkv(preset=tiny)@gpu",
            "nop(preset=tiny)@cpu",
            "qkv(tokens=3,preset=tiny)@cpu",
            "qkv(preset=tiny,preset=x)@cpu",
            "qkv(colour=red)@cpu",
            "qkv(preset)@cpu",
        ] {
            assert!(Case::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_filter_matches_any_of_its_patterns_and_an_empty_one_matches_all() {
        let c = Case::new(Op::Golden, BackendKind::Cuda).preset("tiny");
        assert!(Filter::all().matches(&c));
        assert!(Filter::new(["@mlx".into(), "golden".into()]).matches(&c));
        assert!(!Filter::new(["@mlx".into()]).matches(&c));
        assert!(Filter::new(["golden(preset=tiny@cuda".into()]).matches(&c));
        assert!(!Filter::new(["golden@cpu".into()]).matches(&c));
        assert!(Filter::new(["".into()]).is_all());
    }

    #[test]
    fn a_backend_in_a_pattern_is_matched_whole() {
        let gpu = Case::new(Op::Qkv, BackendKind::MlxGpu).preset("tiny");
        let f = Filter::new(["@mlx".into()]);
        assert!(!f.matches(&gpu), "@mlx must not match @mlx-gpu");
        assert!(f.wants_backend(BackendKind::Mlx));
        assert!(!f.wants_backend(BackendKind::MlxGpu));
        assert!(Filter::new(["qkv".into()]).wants_backend(BackendKind::Cuda));
    }
}
