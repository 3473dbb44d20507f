//! MIG geometry: which slice profiles a GPU model offers and where each may be placed.
//!
//! A MIG-capable GPU has 8 memory slices (and 7 compute slices). A slice of a profile occupies
//! `size` consecutive memory slices starting at one of the profile's legal starts. Placement is
//! therefore a bitmask test on a `u8`: bit `i` set means memory slice `i` is taken.
//!
//! The built-in tables (A100-40GB, A100-80GB, H100-80GB, H200-141GB) follow NVIDIA's published
//! placements and serve as defaults and for tests. On a real node the device plugin reads the
//! profiles and their possible placements from NVML and builds a [`MigGeometry`] with
//! [`MigGeometry::from_reported`], so names and placements are never hard-coded in production.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Memory slices per MIG-capable GPU.
pub const MEMORY_SLICES: u8 = 8;

/// One MIG profile of one GPU model, e.g. `3g.40gb` on an H100-80GB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigProfile {
    /// The name NVIDIA gives it on this model (`1g.10gb`, `3g.40gb`, ...).
    pub name: String,
    /// NVML's GPU-instance profile id (19, 15, 14, 9, 5, 0 on current parts).
    pub profile_id: u32,
    /// Compute slices it uses (out of 7).
    pub compute_slices: u8,
    /// Memory slices it occupies (out of 8): the `size` of each placement.
    pub memory_slices: u8,
    /// Most instances of this profile one GPU can hold.
    pub max_count: u8,
    /// Legal start memory slices.
    pub starts: Vec<u8>,
}

impl MigProfile {
    /// Bitmask of memory slices occupied when placed at `start`.
    pub fn mask_at(&self, start: u8) -> u8 {
        let ones: u16 = (1u16 << self.memory_slices) - 1;
        ((ones << start) & 0xff) as u8
    }

    /// Every legal placement as `(start, mask)`.
    pub fn placements(&self) -> impl Iterator<Item = (u8, u8)> + '_ {
        self.starts.iter().map(move |&s| (s, self.mask_at(s)))
    }
}

/// The MIG profiles of one GPU model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigGeometry {
    /// Normalised model name, e.g. `h100-80gb`.
    pub model: String,
    /// Profiles, smallest first.
    pub profiles: Vec<MigProfile>,
}

/// One profile as NVML reports it (`nvmlDeviceGetGpuInstanceProfileInfo` plus
/// `nvmlDeviceGetGpuInstancePossiblePlacements`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedProfile {
    /// Profile id.
    pub profile_id: u32,
    /// Name as reported or derived at run time (`<compute>g.<memory GB>gb`).
    pub name: String,
    /// Compute slice count.
    pub compute_slices: u8,
    /// Instance count the device supports for this profile.
    pub max_count: u8,
    /// Possible placements as `(start, size)` in memory slices.
    pub placements: Vec<(u8, u8)>,
}

fn table(model: &str, names: [&str; 6]) -> MigGeometry {
    // (profile id, compute, memory slices, max, starts) in the order of the DESIGN table.
    let rows: [(u32, u8, u8, u8, &[u8]); 6] = [
        (19, 1, 1, 7, &[0, 1, 2, 3, 4, 5, 6]),
        (15, 1, 2, 4, &[0, 2, 4, 6]),
        (14, 2, 2, 3, &[0, 2, 4]),
        (9, 3, 4, 2, &[0, 4]),
        (5, 4, 4, 1, &[0]),
        (0, 7, 8, 1, &[0]),
    ];
    MigGeometry {
        model: model.to_string(),
        profiles: rows
            .iter()
            .zip(names)
            .map(|(&(id, c, m, max, starts), name)| MigProfile {
                name: name.to_string(),
                profile_id: id,
                compute_slices: c,
                memory_slices: m,
                max_count: max,
                starts: starts.to_vec(),
            })
            .collect(),
    }
}

impl MigGeometry {
    /// The built-in table for a normalised model name, if there is one.
    pub fn builtin(model: &str) -> Option<MigGeometry> {
        let names = match model {
            "a100-40gb" => [
                "1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb",
            ],
            "a100-80gb" | "h100-80gb" => [
                "1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb",
            ],
            "h200-141gb" => [
                "1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb",
            ],
            _ => return None,
        };
        Some(table(model, names))
    }

    /// Build the geometry from what NVML reported for a device.
    ///
    /// # Errors
    /// A placement that does not fit in 8 memory slices, a profile whose placements disagree on
    /// their size, or a profile with no placement.
    pub fn from_reported(model: &str, reported: &[ReportedProfile]) -> Result<Self, ModelError> {
        let mut profiles = Vec::with_capacity(reported.len());
        for (i, r) in reported.iter().enumerate() {
            let field = format!("mig.profiles[{i}]");
            let Some(&(_, size)) = r.placements.first() else {
                return Err(ModelError::invalid(
                    field,
                    "profile reports no possible placement",
                ));
            };
            let mut starts = Vec::with_capacity(r.placements.len());
            for &(start, sz) in &r.placements {
                if sz != size || sz == 0 || start + sz > MEMORY_SLICES {
                    return Err(ModelError::invalid(
                        field,
                        format!("placement {{start: {start}, size: {sz}}} does not fit 8 memory slices of size {size}"),
                    ));
                }
                starts.push(start);
            }
            starts.sort_unstable();
            starts.dedup();
            profiles.push(MigProfile {
                name: r.name.clone(),
                profile_id: r.profile_id,
                compute_slices: r.compute_slices,
                memory_slices: size,
                max_count: r.max_count,
                starts,
            });
        }
        profiles.sort_by_key(|p| (p.memory_slices, p.compute_slices, p.profile_id));
        Ok(MigGeometry {
            model: model.to_string(),
            profiles,
        })
    }

    /// Look a profile up by name.
    pub fn profile(&self, name: &str) -> Option<(usize, &MigProfile)> {
        self.profiles
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
    }

    /// How many legal placements (over all profiles) are still open on a device whose used
    /// memory slices are `used`. The fragmentation cost of a placement is how much it lowers this.
    pub fn open_placements(&self, used: u8) -> u32 {
        self.profiles
            .iter()
            .flat_map(|p| p.placements())
            .filter(|&(_, m)| m & used == 0)
            .count() as u32
    }
}

/// Derive a MIG profile name the way NVIDIA's tools do: `<compute>g.<memory GB>gb`, with the
/// instance's memory in MiB rounded *up* to whole GiB (40,192 MiB is `40gb`).
pub fn profile_name(compute_slices: u8, memory_mib: u64) -> String {
    let gb = memory_mib.div_ceil(1024);
    format!("{compute_slices}g.{gb}gb")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_placements() {
        let g = MigGeometry::builtin("h100-80gb").expect("builtin");
        let (_, p3) = g.profile("3g.40gb").expect("3g");
        assert_eq!(p3.mask_at(0), 0b0000_1111);
        assert_eq!(p3.mask_at(4), 0b1111_0000);
        let (_, p7) = g.profile("7g.80gb").expect("7g");
        assert_eq!(p7.mask_at(0), 0xff);
        let (_, p1) = g.profile("1g.10gb").expect("1g");
        assert_eq!(p1.placements().count(), 7);
    }

    #[test]
    fn builtin_tables_have_documented_names() {
        for (model, big) in [
            ("a100-40gb", "7g.40gb"),
            ("a100-80gb", "7g.80gb"),
            ("h100-80gb", "7g.80gb"),
            ("h200-141gb", "7g.141gb"),
        ] {
            let g = MigGeometry::builtin(model).expect("builtin");
            assert_eq!(g.profiles.len(), 6);
            assert!(g.profile(big).is_some(), "{model} lacks {big}");
        }
        assert!(MigGeometry::builtin("t4").is_none());
    }

    #[test]
    fn open_placements_shrink_as_slices_are_used() {
        let g = MigGeometry::builtin("a100-80gb").expect("builtin");
        // empty GPU: 7 + 4 + 3 + 2 + 1 + 1
        assert_eq!(g.open_placements(0), 18);
        assert_eq!(g.open_placements(0xff), 0);
        // one 1g slice at 6 kills 1g@6, 1g.20gb@6, 3g@4, 7g@0 => 14 left
        assert_eq!(g.open_placements(0b0100_0000), 14);
    }

    #[test]
    fn reported_geometry_round_trips() {
        let g = MigGeometry::builtin("h100-80gb").expect("builtin");
        let reported: Vec<ReportedProfile> = g
            .profiles
            .iter()
            .map(|p| ReportedProfile {
                profile_id: p.profile_id,
                name: p.name.clone(),
                compute_slices: p.compute_slices,
                max_count: p.max_count,
                placements: p.starts.iter().map(|&s| (s, p.memory_slices)).collect(),
            })
            .collect();
        assert_eq!(
            MigGeometry::from_reported("h100-80gb", &reported).expect("ok"),
            g
        );
    }

    #[test]
    fn reported_geometry_rejects_overflowing_placement() {
        let bad = ReportedProfile {
            profile_id: 9,
            name: "3g.40gb".into(),
            compute_slices: 3,
            max_count: 2,
            placements: vec![(6, 4)],
        };
        let err = MigGeometry::from_reported("h100-80gb", &[bad]).expect_err("bad");
        assert!(err.to_string().starts_with("mig.profiles[0]:"), "{err}");
    }

    #[test]
    fn names_derive_from_memory() {
        assert_eq!(profile_name(1, 9856), "1g.10gb");
        assert_eq!(profile_name(3, 40192), "3g.40gb");
        assert_eq!(profile_name(1, 4864), "1g.5gb");
        assert_eq!(profile_name(7, 80 * 1024), "7g.80gb");
    }
}
