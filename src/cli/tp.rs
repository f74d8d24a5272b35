//! `lockstep tp`: the envelope tensor parallelism adds, simulated on the CPU
//! reference (each rank count and all-reduce order against one device).

use super::args::{print_json, NumericsArg, PathArg};
use lockstep::backend::cpu::tp::ReduceOrder;
use lockstep::backend::AttnPath;
use lockstep::error::Result;
use lockstep::ident::Numerics;
use lockstep::jobs::tp::tp_envelope;
use lockstep::model::Model;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OrderArg {
    /// Chunk c of N summed from rank c round the ring (reduce-scatter).
    Ring,
    /// Ranks added pairwise, then the pairs' sums.
    Tree,
    /// All ranks summed in f32, rounded once (a one-shot all-reduce kernel).
    OneShot,
}

impl From<OrderArg> for ReduceOrder {
    fn from(o: OrderArg) -> Self {
        match o {
            OrderArg::Ring => ReduceOrder::Ring,
            OrderArg::Tree => ReduceOrder::Tree,
            OrderArg::OneShot => ReduceOrder::OneShot,
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "synth:tiny")]
    model: String,
    /// Rank counts simulated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    ranks: Vec<usize>,
    /// All-reduce orders simulated (default: both).
    #[arg(long, value_enum, value_delimiter = ',')]
    orders: Option<Vec<OrderArg>>,
    /// The reference's numerics (default: both).
    #[arg(long, value_enum, value_delimiter = ',')]
    numerics: Option<Vec<NumericsArg>>,
    /// The attention-input path (default graph).
    #[arg(long, value_enum)]
    path: Option<PathArg>,
    #[arg(long, value_delimiter = ',', default_value = "1,17,42,99,3,250,7,8")]
    prompt_ids: Vec<u32>,
    /// Greedy tokens generated per run and compared with one device's
    /// (where they part: a near-tie or a confident change); 0: none.
    #[arg(long, default_value_t = 16)]
    steps: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let m = Model::open(&a.model)?;
    let orders: Vec<ReduceOrder> = a.orders.map_or(ReduceOrder::ALL.to_vec(), |o| {
        o.into_iter().map(Into::into).collect()
    });
    let numerics: Vec<Numerics> = a.numerics.map_or(vec![Numerics::Bf16, Numerics::F64], |n| {
        n.into_iter().map(Into::into).collect()
    });
    let path = a.path.map_or(AttnPath::Graph, Into::into);
    let env = tp_envelope(
        &m,
        &a.prompt_ids,
        &a.ranks,
        &orders,
        &numerics,
        path,
        a.steps,
    )?;
    if a.json {
        print_json(&env);
    } else {
        print!("{}", env.to_text());
    }
    Ok(())
}
