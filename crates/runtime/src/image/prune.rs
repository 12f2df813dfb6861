//! Which images a prune removes: a pure function of the images, the policy, the images in
//! use and the time, so every rule is tested without a disk.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use berth_oci::Digest;

use super::Image;

/// What `prune` removes. The rules add up: an image goes if any rule selects it. Pinned
/// images and images in use are never selected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePolicy {
    /// Every image not in use and not pinned.
    pub all_unused: bool,
    /// Images not used (nor pulled) for at least this long.
    pub unused_for: Option<Duration>,
    /// When disk usage is above this many bytes, remove least-recently-used images …
    pub high_water: Option<u64>,
    /// … until it is at or below this many bytes (the high water mark if unset).
    pub low_water: Option<u64>,
}

/// The ids of the images to remove, oldest activity first.
///
/// `usage` is the store's current disk usage. For the water marks an image frees the unpacked
/// size of those of its layers that no image kept after the prune still uses.
pub fn select_for_prune(
    images: &[Image],
    policy: &PrunePolicy,
    in_use: &HashSet<Digest>,
    now: u64,
    usage: u64,
) -> Vec<Digest> {
    let mut candidates: Vec<&Image> = images
        .iter()
        .filter(|image| !image.pinned && !in_use.contains(&image.id))
        .collect();
    candidates.sort_by(|a, b| {
        a.last_activity()
            .cmp(&b.last_activity())
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut selected: HashSet<&Digest> = HashSet::new();
    for image in &candidates {
        let idle = now.saturating_sub(image.last_activity());
        let stale = policy.unused_for.is_some_and(|d| idle >= d.as_secs());
        if policy.all_unused || stale {
            selected.insert(&image.id);
        }
    }
    if let Some(high) = policy.high_water {
        let low = policy.low_water.unwrap_or(high).min(high);
        // How many kept images use each layer, and how big each layer is.
        let mut users: HashMap<&Digest, usize> = HashMap::new();
        let mut sizes: HashMap<&Digest, u64> = HashMap::new();
        for image in images.iter().filter(|i| !selected.contains(&i.id)) {
            for (layer, size) in layers_with_sizes(image) {
                *users.entry(layer).or_default() += 1;
                sizes.insert(layer, size);
            }
        }
        // What the rules above free already counts towards the low water mark.
        let mut remaining = usage;
        let mut counted = HashSet::new();
        for image in images.iter().filter(|i| selected.contains(&i.id)) {
            for (layer, size) in layers_with_sizes(image) {
                if !users.contains_key(layer) && counted.insert(layer) {
                    remaining = remaining.saturating_sub(size);
                }
            }
        }
        let mut freed_by = |image: &Image| -> u64 {
            let mut freed = 0;
            for (layer, _) in layers_with_sizes(image) {
                if let Some(count) = users.get_mut(layer) {
                    *count -= 1;
                    if *count == 0 {
                        freed += sizes.get(layer).copied().unwrap_or_default();
                    }
                }
            }
            freed
        };
        if usage > high {
            for image in &candidates {
                if remaining <= low {
                    break;
                }
                if selected.insert(&image.id) {
                    remaining = remaining.saturating_sub(freed_by(image));
                }
            }
        }
    }
    candidates
        .iter()
        .filter(|image| selected.contains(&image.id))
        .map(|image| image.id.clone())
        .collect()
}

/// Each distinct layer of `image` with its unpacked size.
fn layers_with_sizes(image: &Image) -> impl Iterator<Item = (&Digest, u64)> {
    let mut seen = HashSet::new();
    image
        .layers
        .iter()
        .enumerate()
        .filter(move |(_, layer)| seen.insert(*layer))
        .map(|(i, layer)| (layer, image.layer_sizes.get(i).copied().unwrap_or_default()))
}
