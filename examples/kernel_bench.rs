//! Microbenchmark of the decode matmuls: `skinny_matmul` vs libtorch's linear, for the default
//! model's weight shapes, 30 layers of distinct weights (so nothing stays in cache).
//! `cargo run --release --example kernel_bench [ROWS]` (HINDSIGHT_SKINNY_ISA=avx2: the AVX2 kernels)
use std::time::Instant;

use hindsight::model::skinny_matmul;
use tch::{Device, Kind, Tensor};

fn main() {
    let rows: i64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
    println!("threads {} rows {rows}", tch::get_num_threads());
    println!("| weights | path | ms per 30 layers | GB/s |");
    println!("| --- | --- | ---: | ---: |");
    for kind in [Kind::Float, Kind::BFloat16] {
        let count: usize = std::env::var("LAYERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        let layers: Vec<Vec<Tensor>> = (0..count)
            .map(|_| {
                shapes
                    .iter()
                    .map(|&(o, i)| Tensor::randn([o, i], (Kind::Float, Device::Cpu)).to_kind(kind))
                    .collect()
            })
            .collect();
        let bytes: i64 = layers
            .iter()
            .flatten()
            .map(|w| w.numel() as i64 * w.kind().elt_size_in_bytes() as i64)
            .sum();
        let xs: Vec<Tensor> = shapes
            .iter()
            .map(|&(_, i)| Tensor::randn([rows, i], (Kind::Float, Device::Cpu)).to_kind(kind))
            .collect();
        for path in ["skinny", "libtorch"] {
            let run = || {
                for layer in &layers {
                    for (w, x) in layer.iter().zip(&xs) {
                        let _ = if path == "skinny" {
                            skinny_matmul::linear(x, w, None).unwrap()
                        } else {
                            x.linear::<Tensor>(w, None)
                        };
                    }
                }
            };
            run();
            let reps = 20;
            let start = Instant::now();
            for _ in 0..reps {
                run();
            }
            let secs = start.elapsed().as_secs_f64() / reps as f64;
            println!(
                "| {kind:?} | {path} | {:.2} | {:.1} |",
                secs * 1e3,
                bytes as f64 / secs / 1e9
            );
        }
    }
}
