//! Training data pipeline: mosaic, random perspective, HSV jitter, flips, seeded batches.
//!
//! [`TrainLoader`] turns a scanned split into the batches the reference's train loader yields
//! (its `v8_transforms` with the default hyperparameters, then `Format` and `collate_fn`):
//!
//! 1. **load**: the image decoded and its long side resized to `imgsz` ([`transform::resize_long_side`]);
//! 2. **mosaic** (probability `mosaic`, 1.0 by default): four images on a `2 imgsz` canvas of
//!    grey 114 around a random centre, boxes clipped to the canvas;
//! 3. **random perspective**: centre, rotate and scale U(1 ± scale), shear, translate to
//!    U(0.5 ± translate) of `imgsz`, warped to `imgsz x imgsz` with border 114; boxes kept when
//!    wider and higher than 2 px, with over 10 % of their scaled area and aspect ratio under 100;
//! 4. **HSV jitter** in OpenCV's 8-bit HSV through lookup tables ([`hsv`]);
//! 5. **flips**: vertical with probability `flipud`, then horizontal with `fliplr`;
//! 6. boxes as normalised `cx, cy, w, h`, pixels as RGB / 255 in an `(n, 3, imgsz, imgsz)` tensor.
//!
//! After [`TrainLoader::close_mosaic`] step 2 is skipped: each sample is one image, which the
//! random perspective centres, scales and translates onto the `imgsz` square.
//!
//! Given the same random draws, steps 1-6 reproduce the reference bit for bit: the resize is
//! OpenCV's, the transform matrix is composed in `f32` as the reference composes it, the warp
//! follows OpenCV 5's floating-point `warpAffine`, and the HSV conversions are OpenCV's (a test
//! replays two reference runs draw for draw and compares every pixel). The draws themselves come
//! from this module's own generator, so a run is not the reference's run, only distributed like
//! it.
//!
//! # Determinism
//!
//! A run must repeat exactly under the same seed, and a resumed run must continue as the
//! uninterrupted one would. So nothing depends on thread scheduling: the epoch's order is a
//! shuffle keyed by `(seed, epoch)`, every sample draws from its own stream keyed by
//! `(seed, epoch, image index)` ([`rng::Rng::keyed`]), and background workers only decide *when*
//! a batch is built, never what it holds. `workers = 0, 1, 3` give identical batches.
//!
//! The reference picks mosaic partners from a per-worker buffer of recently loaded images, which
//! depends on its process scheduling. Here the "buffer" is defined by the epoch order: the
//! partners of the sample at position `p` are drawn uniformly from the images at positions
//! `p - W + 1 ..= p` (reaching back into the previous epoch's order), with the reference's size
//! `W = min(n, 8 batch, 1000) - 1`. The reference draws from the whole dataset instead when
//! images are cached in RAM; that is not copied, so that a run does not depend on how much
//! memory the machine has.
//!
//! # Image cache
//!
//! Decoding dominates the cost of a sample, so decoded, resized images are kept: all of them
//! when they fit comfortably in memory (twice their size available, the reference's RAM check),
//! otherwise a bounded set of the most recently used, which covers the mosaic window.

pub mod hsv;
pub mod rng;
pub mod transform;
pub mod warp;

#[cfg(test)]
mod tests;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;

use crate::data::dataset::{LabelBox, LabeledSplit};
use crate::data::letterbox::extend_chw_f32;
use crate::engine::Tensor;
use rng::Rng;
use transform::{PerspectiveConfig, PixelBox, Sample};

/// Augmentation hyperparameters, named and defaulted as the reference's (`default.yaml`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Output side in pixels (a multiple of the model stride, 32).
    pub imgsz: usize,
    /// Probability of a 4-image mosaic.
    pub mosaic: f32,
    /// Rotation range, ± degrees.
    pub degrees: f32,
    /// Translation range, ± fraction of `imgsz`.
    pub translate: f32,
    /// Scale range: U(1 - scale, 1 + scale).
    pub scale: f32,
    /// Shear range, ± degrees.
    pub shear: f32,
    /// Perspective range (0 for a purely affine warp).
    pub perspective: f32,
    /// Hue gain (fraction of the hue circle).
    pub hsv_h: f32,
    /// Saturation gain (fraction).
    pub hsv_s: f32,
    /// Value gain (fraction).
    pub hsv_v: f32,
    /// Probability of a left-right flip.
    pub fliplr: f32,
    /// Probability of an up-down flip.
    pub flipud: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            imgsz: 640,
            mosaic: 1.0,
            degrees: 0.0,
            translate: 0.1,
            scale: 0.5,
            shear: 0.0,
            perspective: 0.0,
            hsv_h: 0.015,
            hsv_s: 0.7,
            hsv_v: 0.4,
            fliplr: 0.5,
            flipud: 0.0,
        }
    }
}

impl AugmentConfig {
    fn perspective_config(&self) -> PerspectiveConfig {
        PerspectiveConfig {
            degrees: self.degrees,
            translate: self.translate,
            scale: self.scale,
            shear: self.shear,
            perspective: self.perspective,
        }
    }

    fn check(&self) -> Result<()> {
        if self.imgsz == 0 {
            bail!("imgsz must be positive");
        }
        for (name, p) in [("mosaic", self.mosaic), ("fliplr", self.fliplr), ("flipud", self.flipud)] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name}={p} must be a probability between 0 and 1");
            }
        }
        let all = [self.degrees, self.translate, self.scale, self.shear, self.perspective, self.hsv_h, self.hsv_s, self.hsv_v];
        if all.iter().any(|v| !v.is_finite() || *v < 0.0) {
            bail!("augmentation settings must be finite and non-negative: {self:?}");
        }
        Ok(())
    }
}

/// One training batch.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `(n, 3, imgsz, imgsz)`, RGB, values 0..1 (pixel / 255).
    pub images: Tensor,
    /// Objects of all images: (index in the batch, class, normalised `cx, cy, w, h`).
    pub targets: Vec<(usize, usize, [f32; 4])>,
    /// The image each sample was built around (a mosaic's top-left image).
    pub paths: Vec<PathBuf>,
}

/// One image of the split and its labels.
#[derive(Clone, Debug)]
struct Item {
    path: PathBuf,
    boxes: Vec<LabelBox>,
}

/// Decoded, resized images.
enum ImageCache {
    /// Every image, decoded on first use and kept.
    All(Vec<OnceLock<Arc<RgbImage>>>),
    /// The most recently decoded images, up to a count.
    Recent(Mutex<RecentImages>),
}

struct RecentImages {
    images: HashMap<usize, Arc<RgbImage>>,
    /// Insertion order, oldest first, for eviction.
    order: VecDeque<usize>,
    capacity: usize,
}

/// What the loader's threads share: the split and the image cache.
struct Shared {
    items: Vec<Item>,
    imgsz: usize,
    cache: ImageCache,
}

impl Shared {
    /// The decoded image `i`, long side `imgsz`, from the cache or decoded now.
    fn image(&self, i: usize) -> Result<Arc<RgbImage>> {
        let load = || -> Result<Arc<RgbImage>> {
            let path = &self.items[i].path;
            Ok(Arc::new(transform::load_resized(path, self.imgsz).with_context(|| format!("training image {}", path.display()))?))
        };
        match &self.cache {
            ImageCache::All(slots) => {
                if let Some(img) = slots[i].get() {
                    return Ok(img.clone());
                }
                // Two threads may decode the same image at once; both results are identical and
                // the first stored wins, which is cheaper than holding a lock while decoding.
                let img = load()?;
                Ok(slots[i].get_or_init(|| img).clone())
            }
            ImageCache::Recent(recent) => {
                if let Some(img) = recent.lock().unwrap_or_else(|e| e.into_inner()).images.get(&i) {
                    return Ok(img.clone());
                }
                let img = load()?;
                let mut guard = recent.lock().unwrap_or_else(|e| e.into_inner());
                let r = &mut *guard;
                if let Entry::Vacant(slot) = r.images.entry(i) {
                    slot.insert(img.clone());
                    r.order.push_back(i);
                    while r.order.len() > r.capacity {
                        if let Some(old) = r.order.pop_front() {
                            r.images.remove(&old);
                        }
                    }
                }
                Ok(img)
            }
        }
    }
}

/// Memory available for new allocations (`MemAvailable`), when the system says.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Random-stream purposes, so that streams keyed by the same numbers never coincide.
const STREAM_SHUFFLE: u64 = 0x5348_5546; // "SHUF"
const STREAM_SAMPLE: u64 = 0x5341_4d50; // "SAMP"

/// Everything that fixes one epoch's batches.
struct EpochPlan {
    cfg: AugmentConfig,
    seed: u64,
    epoch: usize,
    batch: usize,
    /// Image indices in this epoch's order.
    order: Vec<usize>,
    /// The previous epoch's order (empty in epoch 0), the mosaic window's reach back.
    prev_order: Vec<usize>,
    /// Mosaic window length (positions).
    window: usize,
}

/// The image order of an epoch: a shuffle keyed by (seed, epoch).
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::keyed(&[seed, epoch as u64, STREAM_SHUFFLE]).shuffle(&mut order);
    order
}

impl EpochPlan {
    fn batches(&self) -> usize {
        self.order.len().div_ceil(self.batch)
    }

    /// A mosaic partner for the sample at `pos`: an image from the window of positions
    /// `pos - window + 1 ..= pos`, reaching into the previous epoch's order before position 0.
    fn partner(&self, pos: usize, rng: &mut Rng) -> usize {
        let n = self.order.len();
        let back = if self.prev_order.is_empty() { pos } else { pos + n };
        let len = self.window.min(back + 1);
        let q = pos as i64 - rng.below(len) as i64;
        if q >= 0 {
            self.order[q as usize]
        } else {
            self.prev_order[(n as i64 + q) as usize]
        }
    }

    /// The augmented sample at position `pos` of the epoch, and its image index.
    fn sample(&self, shared: &Shared, pos: usize) -> Result<(Sample, usize)> {
        let cfg = &self.cfg;
        let s = cfg.imgsz;
        let i = self.order[pos];
        let mut rng = Rng::keyed(&[self.seed, self.epoch as u64, i as u64, STREAM_SAMPLE]);
        let primary = shared.image(i)?;
        let use_mosaic = cfg.mosaic > 0.0 && rng.random() <= cfg.mosaic as f64;
        let persp = cfg.perspective_config();
        let mut sample = if use_mosaic {
            let centre = transform::mosaic_centre(s, &mut |a, b| rng.uniform(a, b));
            let partners = [self.partner(pos, &mut rng), self.partner(pos, &mut rng), self.partner(pos, &mut rng)];
            let imgs = [shared.image(partners[0])?, shared.image(partners[1])?, shared.image(partners[2])?];
            let it = |k: usize| &shared.items[k].boxes[..];
            let tiles = [(&*primary, it(i)), (&*imgs[0], it(partners[0])), (&*imgs[1], it(partners[1])), (&*imgs[2], it(partners[2]))];
            let mosaic = transform::mosaic4(s, centre, tiles);
            transform::random_perspective(&mosaic.img, &mosaic.boxes, &persp, &mut |a, b| rng.uniform(a, b), (s as u32, s as u32))
        } else {
            let boxes: Vec<PixelBox> = transform::to_pixel_boxes(&shared.items[i].boxes, primary.width(), primary.height());
            transform::random_perspective(&primary, &boxes, &persp, &mut |a, b| rng.uniform(a, b), (s as u32, s as u32))
        };
        hsv::jitter(&mut sample.img, [cfg.hsv_h, cfg.hsv_s, cfg.hsv_v], |a, b| rng.uniform(a, b));
        if rng.random() < cfg.flipud as f64 {
            transform::flip_ud(&mut sample);
        }
        if rng.random() < cfg.fliplr as f64 {
            transform::flip_lr(&mut sample);
        }
        Ok((sample, i))
    }

    /// Batch `b` of the epoch.
    fn build(&self, shared: &Shared, b: usize) -> Result<Batch> {
        let s = self.cfg.imgsz;
        let positions = b * self.batch..((b + 1) * self.batch).min(self.order.len());
        let n = positions.len();
        let mut pixels = Vec::with_capacity(n * 3 * s * s);
        let mut targets = Vec::new();
        let mut paths = Vec::with_capacity(n);
        for (k, pos) in positions.enumerate() {
            let (sample, i) = self.sample(shared, pos)?;
            extend_chw_f32(&sample.img, &mut pixels);
            let (w, h) = sample.img.dimensions();
            targets.extend(sample.boxes.iter().map(|bx| (k, bx.class_id, transform::to_normalized_xywh(bx, w, h))));
            paths.push(shared.items[i].path.clone());
        }
        Ok(Batch { images: Tensor::new([n, 3, s, s], pixels), targets, paths })
    }

    /// [`Self::build`], with a panic turned into an error so that the consumer never waits on a
    /// batch that will not come.
    fn build_caught(&self, shared: &Shared, b: usize) -> Result<Batch> {
        match catch_unwind(AssertUnwindSafe(|| self.build(shared, b))) {
            Ok(r) => r,
            Err(p) => {
                let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                Err(anyhow!("data loader panicked building batch {b}: {}", msg.unwrap_or_default()))
            }
        }
    }
}

/// The augmented, shuffled training batches of a split, built in background threads.
///
/// ```no_run
/// # use ferroyolo::data::dataset::{DatasetConfig, scan_split};
/// # use ferroyolo::train::augment::{AugmentConfig, TrainLoader};
/// # fn main() -> anyhow::Result<()> {
/// let cfg = DatasetConfig::load("coco8.yaml")?;
/// let mut loader = TrainLoader::new(scan_split(&cfg, "train")?, AugmentConfig::default(), 16, 2, 0)?;
/// for epoch in 0..3 {
///     loader.set_epoch(epoch);
///     for batch in loader.iter() {
///         let batch = batch?;
///         // batch.images: (n, 3, 640, 640), batch.targets: (image, class, cx cy w h)
///     }
/// }
/// # Ok(()) }
/// ```
pub struct TrainLoader {
    shared: Arc<Shared>,
    cfg: AugmentConfig,
    batch: usize,
    workers: usize,
    seed: u64,
    epoch: usize,
    mosaic_closed: bool,
    ram: bool,
}

impl TrainLoader {
    /// A loader over the usable images of `split`.
    ///
    /// `batch` is capped at the number of images, as the reference caps it. `workers` threads
    /// (0: none, batches are built on the caller's thread) prepare batches ahead of the
    /// consumer. `seed` fixes every shuffle and random draw.
    pub fn new(split: LabeledSplit, cfg: AugmentConfig, batch: usize, workers: usize, seed: u64) -> Result<Self> {
        cfg.check()?;
        if split.images.is_empty() {
            bail!("no usable training images in split '{}'", split.split);
        }
        if batch == 0 {
            bail!("batch size must be at least 1");
        }
        let n = split.images.len();
        let batch = batch.min(n);
        // Bytes of all images resized to imgsz on their long side, from the header shapes.
        let bytes: u64 = split
            .images
            .iter()
            .map(|im| {
                let (h, w) = (im.shape.0 as f64, im.shape.1 as f64);
                let r = cfg.imgsz as f64 / h.max(w);
                ((h * r).ceil() * (w * r).ceil() * 3.0) as u64
            })
            .sum();
        let ram = match available_memory() {
            Some(avail) => bytes.saturating_mul(2) < avail,
            None => bytes < 2 << 30,
        };
        let cache = Self::make_cache(n, batch, workers, ram);
        let items = split.images.into_iter().map(|im| Item { path: im.image, boxes: im.boxes }).collect();
        let shared = Arc::new(Shared { items, imgsz: cfg.imgsz, cache });
        Ok(TrainLoader { shared, cfg, batch, workers, seed, epoch: 0, mosaic_closed: false, ram })
    }

    fn make_cache(n: usize, batch: usize, workers: usize, all: bool) -> ImageCache {
        if all {
            ImageCache::All((0..n).map(|_| OnceLock::new()).collect())
        } else {
            // The mosaic window, plus the images of the batches in flight.
            let capacity = Self::window_for(n, batch) + 4 * batch * (workers + 1);
            ImageCache::Recent(Mutex::new(RecentImages { images: HashMap::new(), order: VecDeque::new(), capacity }))
        }
    }

    /// The reference's mosaic buffer length for `n` images: min(n, 8 batch, 1000), less the one
    /// it pops as the buffer fills, at least 1.
    fn window_for(n: usize, batch: usize) -> usize {
        n.min(8 * batch).min(1000).saturating_sub(1).max(1)
    }

    /// Batches per epoch: every image once, the last batch possibly smaller (the reference's
    /// train loader keeps it).
    pub fn len(&self) -> usize {
        self.shared.items.len().div_ceil(self.batch)
    }

    /// Never true: a loader has at least one image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of images per epoch.
    pub fn num_images(&self) -> usize {
        self.shared.items.len()
    }

    /// The batch size in use (the requested one, capped at the number of images).
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Whether every decoded image is kept in memory.
    pub fn caches_all_images(&self) -> bool {
        self.ram
    }

    /// Keeps every decoded image (`true`, the reference's `cache=ram`), or only the recently used
    /// ones (`false`), overriding the choice [`Self::new`] made from the memory available. Only
    /// speed and memory change: the batches are the same either way. Drops what is cached.
    pub fn set_cache_all(&mut self, all: bool) {
        let cache = Self::make_cache(self.shared.items.len(), self.batch, self.workers, all);
        // Worker threads hold the shared state only while a `Batches` (which borrows `self`)
        // lives, so it is normally unshared here; cloning the list is the fallback.
        let items = match Arc::get_mut(&mut self.shared) {
            Some(shared) => std::mem::take(&mut shared.items),
            None => self.shared.items.clone(),
        };
        self.shared = Arc::new(Shared { items, imgsz: self.cfg.imgsz, cache });
        self.ram = all;
    }

    /// The augmentation settings in effect (mosaic 0 once closed).
    pub fn config(&self) -> AugmentConfig {
        let mut cfg = self.cfg;
        if self.mosaic_closed {
            cfg.mosaic = 0.0;
        }
        cfg
    }

    /// Selects the epoch that [`Self::iter`] produces; its order and augmentations are a
    /// function of (seed, epoch) only.
    pub fn set_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
    }

    /// The epoch [`Self::iter`] produces.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Turns mosaic off for the rest of training (the reference's `close_mosaic`): samples are
    /// then single images through the random perspective.
    pub fn close_mosaic(&mut self) {
        self.mosaic_closed = true;
    }

    fn plan(&self) -> EpochPlan {
        let n = self.shared.items.len();
        EpochPlan {
            cfg: self.config(),
            seed: self.seed,
            epoch: self.epoch,
            batch: self.batch,
            order: epoch_order(n, self.seed, self.epoch),
            prev_order: if self.epoch > 0 { epoch_order(n, self.seed, self.epoch - 1) } else { Vec::new() },
            window: Self::window_for(n, self.batch),
        }
    }

    /// The batches of the current epoch, in order. Background threads build them ahead of
    /// consumption (at most `workers + 1` batches ahead); dropping the iterator stops them.
    /// A batch whose images cannot be read is an error item; the following batches still come.
    ///
    /// With `workers > 0` the threads compete for cores with whatever consumes the batches;
    /// they are plain threads, not the global rayon pool, so model compute is not queued behind
    /// image work.
    pub fn iter(&self) -> Batches<'_> {
        let plan = Arc::new(self.plan());
        let len = plan.batches();
        // As the reference: no more workers than batches, none for a single batch.
        let workers = if len <= 1 { 0 } else { self.workers.min(len) };
        let queue = Arc::new(Queue { state: Mutex::new(QueueState::default()), ready: Condvar::new() });
        // Batches started beyond the consumer: enough to keep every worker busy with one more
        // ready, no more (a 640 batch of 16 is 79 MB of f32).
        let ahead = workers + 1;
        let handles = (0..workers)
            .map(|k| {
                let (plan, shared, queue) = (plan.clone(), self.shared.clone(), queue.clone());
                std::thread::Builder::new()
                    .name(format!("ferroyolo-loader-{k}"))
                    .spawn(move || worker(&plan, &shared, &queue, len, ahead))
                    .expect("cannot spawn a data loader thread")
            })
            .collect();
        Batches { loader: self, plan, queue, handles, next: 0, len }
    }
}

#[derive(Default)]
struct QueueState {
    /// Next batch index a worker will take.
    next_job: usize,
    /// Batches handed to the consumer so far.
    consumed: usize,
    /// Built batches not yet consumed.
    done: BTreeMap<usize, Result<Batch>>,
    stop: bool,
}

struct Queue {
    state: Mutex<QueueState>,
    /// Signalled whenever the state changes (a batch done, one consumed, stop).
    ready: Condvar,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A loader thread: takes the next batch index (staying at most `ahead` batches in front of the
/// consumer, to bound memory), builds it, hands it over.
fn worker(plan: &EpochPlan, shared: &Shared, queue: &Queue, len: usize, ahead: usize) {
    loop {
        let b = {
            let mut st = queue.lock();
            loop {
                if st.stop || st.next_job >= len {
                    return;
                }
                if st.next_job < st.consumed + ahead {
                    st.next_job += 1;
                    break st.next_job - 1;
                }
                st = queue.ready.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let result = plan.build_caught(shared, b);
        queue.lock().done.insert(b, result);
        queue.ready.notify_all();
    }
}

/// Iterator over one epoch's batches ([`TrainLoader::iter`]).
pub struct Batches<'a> {
    loader: &'a TrainLoader,
    plan: Arc<EpochPlan>,
    queue: Arc<Queue>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    len: usize,
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.len {
            return None;
        }
        let b = self.next;
        self.next += 1;
        if self.handles.is_empty() {
            return Some(self.plan.build_caught(&self.loader.shared, b));
        }
        let mut st = self.queue.lock();
        loop {
            if let Some(r) = st.done.remove(&b) {
                st.consumed = b + 1;
                drop(st);
                self.queue.ready.notify_all();
                return Some(r);
            }
            st = self.queue.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.len - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}

impl Drop for Batches<'_> {
    fn drop(&mut self) {
        self.queue.lock().stop = true;
        self.queue.ready.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The objects of image `k`: class and normalised `cx, cy, w, h`.
    pub fn targets_of(&self, k: usize) -> impl Iterator<Item = (usize, [f32; 4])> + '_ {
        self.targets.iter().filter(move |t| t.0 == k).map(|t| (t.1, t.2))
    }

    /// Image `k` back as 8-bit RGB (for looking at what the model is shown).
    pub fn image(&self, k: usize) -> RgbImage {
        let [_, _, h, w] = self.images.shape();
        let plane = h * w;
        let data = &self.images.data()[k * 3 * plane..(k + 1) * 3 * plane];
        RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let o = y as usize * w + x as usize;
            image::Rgb([0, 1, 2].map(|c| (data[c * plane + o] * 255.0).round() as u8))
        })
    }
}
