//! Packing on a tenth of the openb trace (`data/openb-packing`, Apache-2.0, see its README):
//! the FGD paper's fill experiment over ten seeds. gantry's default profile must pack at least
//! as well as the FGD reference profile measured in the same runs, and FGD better than the
//! paper's BestFit baseline, as on the full trace.

use gantry_engine::Profile;
use gantry_sim::driver::{replay, Options};
use gantry_sim::openb;

fn mean_alloc(profile: &Profile) -> f64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/openb-packing");
    let (cluster, pods) = openb::load(
        &dir.join("openb_node_list_gpu_node.csv"),
        &dir.join("openb_pod_list_default.csv"),
    )
    .expect("sample loads");
    let seeds = 42..52u64;
    let n = seeds.clone().count() as f64;
    seeds
        .map(|seed| {
            let w = openb::fill("packing", cluster.clone(), &pods, 1.3, seed).expect("fill");
            let r = replay(&w, profile, &Options::default(), &mut |_| {}).expect("replay");
            r.fill.expect("a fill result").allocated_pct_of_capacity
        })
        .sum::<f64>()
        / n
}

#[test]
fn gantry_packs_at_least_as_well_as_fgd_and_fgd_beats_best_fit() {
    let best_fit = mean_alloc(&Profile::best_fit());
    let fgd = mean_alloc(&Profile::fgd());
    let gantry = mean_alloc(&Profile::gantry());
    eprintln!("mean allocated % over seeds 42..51: best-fit {best_fit:.2}, fgd {fgd:.2}, gantry {gantry:.2}");
    assert!(gantry >= fgd, "gantry {gantry:.2} < fgd {fgd:.2}");
    assert!(fgd > best_fit, "fgd {fgd:.2} <= best-fit {best_fit:.2}");
}
