//! Continuous batching: requests join and leave one running batch.
//!
//! A [`Batcher`] owns a thread and a batched KV cache for one model. Every step decodes one token for each
//! running sequence in a single forward pass, so the weights are read once per step for all of them. New requests
//! are prefilled each in its own cache (no work on padding), `prefill_chunk` tokens per step while others are
//! decoding (a long prompt slows the running streams a little instead of stopping them) and
//! [`IDLE_PREFILL_CHUNK`] when nothing else runs, shortest remaining prompt first, so a short request that arrives
//! during a long prompt is answered without waiting for it; each joins the running batch as soon as its prompt is
//! in ([`Cache::stack`], [`Cache::merge`]). Between chunks each joining request's listener is asked whether its
//! client is still there ([`BatchEvent::Prefilling`]). A sequence that ends — end of sequence, stop
//! string, token budget, the context limit, or its receiver cancelling — leaves at once ([`Cache::retain`]) and
//! the cache drops padding nobody needs ([`Cache::trim`]).
//!
//! A request's answer equals what [`Model::generate`] gives alone up to float rounding: a batch sums in another
//! order (padding shifts attention's reductions), so a greedy near-tie can occasionally flip late in an answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use crate::batch::Seq;
use crate::generate::{FinishReason, Generation};
use crate::loader::Model;
use crate::model::Cache;
use crate::sampling::SamplingParams;
use crate::EngineError;

/// What a request's receiver hears, in order: text pieces, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum BatchEvent {
    /// Sent before each chunk of the prompt is run (`done` of `total` prompt tokens are in): nothing to show, but
    /// returning `false` cancels the request before the next chunk, so a client that left mid-prompt stops
    /// costing the batch at once.
    Prefilling {
        done: usize,
        total: usize,
    },
    /// Text that is final (complete characters, not part of a possible stop string).
    Text(String),
    Done(Generation),
    Failed(EngineError),
}

/// Receives a request's events on the batch thread; returns `false` to cancel the request (the client left).
/// It must not block: the whole batch waits for it.
pub type Listener = Box<dyn FnMut(BatchEvent) -> bool + Send>;

#[derive(Debug, Clone, Copy)]
pub struct BatcherSettings {
    /// Sequences decoded together at most; more requests wait in line.
    pub max_batch: usize,
    /// Prompt tokens prefilled per step while other sequences are decoding (at least [`IDLE_PREFILL_CHUNK`]
    /// when nothing else runs).
    pub prefill_chunk: usize,
}

impl Default for BatcherSettings {
    fn default() -> Self {
        Self {
            max_batch: 8,
            prefill_chunk: 64,
        }
    }
}

/// Prompt tokens run per step when nothing is decoding: large enough for the prompt GEMM's full speed, small
/// enough that a request arriving meanwhile (or a client leaving) waits for one chunk, not a whole long prompt.
pub const IDLE_PREFILL_CHUNK: usize = 512;

/// Counters of a batch thread (for metrics): how full its batches were.
#[derive(Debug, Default)]
pub struct BatchStats {
    decode_steps: AtomicU64,
    decoded_rows: AtomicU64,
    prefill_chunks: AtomicU64,
    largest: AtomicU64,
}

/// A snapshot of [`BatchStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Forward passes that decoded one token for every running sequence.
    pub decode_steps: u64,
    /// Tokens those passes decoded (divided by `decode_steps`: the mean batch size).
    pub decoded_rows: u64,
    /// Forward passes over joining prompts.
    pub prefill_chunks: u64,
    /// The most sequences decoded in one pass.
    pub largest: u64,
}

impl BatchStats {
    pub fn counts(&self) -> BatchCounts {
        BatchCounts {
            decode_steps: self.decode_steps.load(Ordering::Relaxed),
            decoded_rows: self.decoded_rows.load(Ordering::Relaxed),
            prefill_chunks: self.prefill_chunks.load(Ordering::Relaxed),
            largest: self.largest.load(Ordering::Relaxed),
        }
    }
}

struct Job {
    prompt: Vec<u32>,
    params: SamplingParams,
    listener: Listener,
    submitted: Instant,
}

/// A running batch for one model. Dropping every handle lets the thread finish the running requests and exit.
pub struct Batcher {
    tx: Sender<Job>,
    settings: BatcherSettings,
    stats: Arc<BatchStats>,
}

impl Batcher {
    pub fn new(model: Arc<Model>, settings: BatcherSettings) -> Result<Self, EngineError> {
        let settings = BatcherSettings {
            max_batch: settings.max_batch.max(1),
            prefill_chunk: settings.prefill_chunk.max(1),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let stats = Arc::new(BatchStats::default());
        let shared = stats.clone();
        std::thread::Builder::new()
            .name("vibecheck-batch".into())
            .spawn(move || Loop::new(model, settings, shared).run(rx))
            .map_err(|e| EngineError::Config(format!("starting the batch thread: {e}")))?;
        Ok(Self {
            tx,
            settings,
            stats,
        })
    }

    pub fn settings(&self) -> BatcherSettings {
        self.settings
    }

    /// How full the batches have been so far.
    pub fn counts(&self) -> BatchCounts {
        self.stats.counts()
    }

    /// Queues a generation from `prompt` (token ids). Its events go to `listener`, on the batch thread.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams, listener: Listener) {
        let job = Job {
            prompt,
            params,
            listener,
            submitted: Instant::now(),
        };
        if let Err(std::sync::mpsc::SendError(mut job)) = self.tx.send(job) {
            (job.listener)(BatchEvent::Failed(EngineError::Internal(
                "the model's batch thread has stopped".into(),
            )));
        }
    }
}

/// A sequence in the batch (or being prefilled).
struct Live {
    seq: Seq,
    listener: Listener,
    /// The token to feed at the next step.
    next: u32,
    /// A `Failed` event went out already.
    failed: bool,
}

impl Live {
    /// Sends `text`; a receiver that is gone cancels the sequence.
    fn emit(&mut self, text: String) {
        if !text.is_empty() && !(self.listener)(BatchEvent::Text(text)) {
            self.seq.finish = Some(FinishReason::Cancelled);
        }
    }

    fn fail(mut self, e: &EngineError) {
        tracing::error!(error = %e, "generation failed");
        (self.listener)(BatchEvent::Failed(e.for_client()));
    }

    /// Flushes and reports the finished generation.
    fn done(mut self, model: &Model) {
        if self.failed {
            return;
        }
        let (tail, finish) = match self.seq.close(model) {
            Ok(x) => x,
            Err(e) => return self.fail(&e),
        };
        if !tail.is_empty() {
            (self.listener)(BatchEvent::Text(tail));
        }
        let generation = self.seq.generation(model, finish);
        (self.listener)(BatchEvent::Done(generation));
    }
}

/// New sequences being prefilled, each in its own cache (no work spent on padding); they join the running batch
/// together once all their prompts are in.
struct Group {
    members: Vec<Member>,
}

struct Member {
    live: Live,
    prompt: Vec<u32>,
    cache: Cache,
    /// Prompt positions already run.
    done: usize,
    /// Logits after the last prompt position, once the whole prompt is in.
    last: Option<Vec<f32>>,
}

struct Loop {
    model: Arc<Model>,
    settings: BatcherSettings,
    queue: VecDeque<Job>,
    running: Vec<Live>,
    cache: Option<Cache>,
    joining: Option<Group>,
    stats: Arc<BatchStats>,
}

impl Loop {
    fn new(model: Arc<Model>, settings: BatcherSettings, stats: Arc<BatchStats>) -> Self {
        Self {
            model,
            settings,
            stats,
            queue: VecDeque::new(),
            running: Vec::new(),
            cache: None,
            joining: None,
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        let mut open = true;
        loop {
            if self.running.is_empty() && self.joining.is_none() && self.queue.is_empty() {
                if !open {
                    return;
                }
                match rx.recv() {
                    Ok(job) => self.queue.push_back(job),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(job) => self.queue.push_back(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.admit();
            if self.joining.is_some() {
                self.prefill_step();
            }
            if !self.running.is_empty() {
                self.decode_step();
            }
        }
    }

    /// Takes waiting requests into the prefill group (started if there is none), as many as the batch has room
    /// for.
    fn admit(&mut self) {
        let joining = self.joining.as_ref().map_or(0, |g| g.members.len());
        let room = self
            .settings
            .max_batch
            .saturating_sub(self.running.len() + joining);
        let mut live = Vec::new();
        while live.len() < room {
            let Some(mut job) = self.queue.pop_front() else {
                break;
            };
            match Seq::new(&self.model, &job.prompt, &job.params, job.submitted) {
                Ok(seq) => live.push((
                    Live {
                        seq,
                        listener: job.listener,
                        next: 0,
                        failed: false,
                    },
                    job.prompt,
                )),
                Err(e) => {
                    (job.listener)(BatchEvent::Failed(e));
                }
            }
        }
        if live.is_empty() {
            return;
        }
        let cfg = &self.model.decoder.cfg;
        let group = self.joining.get_or_insert_with(|| Group {
            members: Vec::new(),
        });
        group
            .members
            .extend(live.into_iter().map(|(live, prompt)| Member {
                live,
                prompt,
                cache: Cache::new(cfg, 1),
                done: 0,
                last: None,
            }));
    }

    /// Runs the next chunk of the joining prompts, shortest remaining first: `prefill_chunk` tokens in all while
    /// others are decoding, [`IDLE_PREFILL_CHUNK`] (or `prefill_chunk` if larger) when nothing else runs. A member
    /// whose listener says its client left is dropped before its chunk; each member whose prompt is in samples its
    /// first token and joins the running batch.
    fn prefill_step(&mut self) {
        let Some(mut g) = self.joining.take() else {
            return;
        };
        let mut budget = if self.running.is_empty() {
            self.settings.prefill_chunk.max(IDLE_PREFILL_CHUNK)
        } else {
            self.settings.prefill_chunk
        };
        g.members.sort_by_key(|m| m.prompt.len() - m.done);
        let mut failed = None;
        for m in g.members.iter_mut().filter(|m| m.last.is_none()) {
            if budget == 0 {
                break;
            }
            let progress = BatchEvent::Prefilling {
                done: m.done,
                total: m.prompt.len(),
            };
            if !(m.live.listener)(progress) {
                m.live.seq.finish = Some(FinishReason::Cancelled);
                continue;
            }
            let take = budget.min(m.prompt.len() - m.done);
            let started = Instant::now();
            let result = self
                .model
                .decoder
                .forward(
                    &[m.prompt[m.done..m.done + take].to_vec()],
                    &mut m.cache,
                    false,
                )
                .and_then(|l| Ok(l.squeeze(0)?.to_vec1::<f32>()?));
            self.stats.prefill_chunks.fetch_add(1, Ordering::Relaxed);
            m.live.seq.prefill_ms += started.elapsed().as_secs_f64() * 1000.0;
            match result {
                Ok(logits) => {
                    m.done += take;
                    budget -= take;
                    if m.done == m.prompt.len() {
                        m.last = Some(logits);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            tracing::warn!("prefill failed: {e}");
            g.members.into_iter().for_each(|m| m.live.fail(&e));
            return;
        }
        // Cancelled members leave; finished ones join the batch; the rest go on at the next step.
        let (ready, waiting): (Vec<Member>, Vec<Member>) = g
            .members
            .into_iter()
            .filter(|m| m.live.seq.finish != Some(FinishReason::Cancelled))
            .partition(|m| m.last.is_some());
        if !waiting.is_empty() {
            self.joining = Some(Group { members: waiting });
        }
        let mut kept = Vec::new();
        let mut caches = Vec::new();
        for mut m in ready {
            let mut row = m.last.take().unwrap_or_default();
            if self.sample(&mut m.live, &mut row) {
                kept.push(m.live);
                caches.push(m.cache);
            } else {
                m.live.done(&self.model);
            }
        }
        if kept.is_empty() {
            return;
        }
        let merged = Cache::stack(caches).and_then(|group| match self.cache.as_mut() {
            Some(c) => c.merge(group).and_then(|_| c.trim()),
            None => {
                self.cache = Some(group);
                Ok(())
            }
        });
        match merged {
            Ok(()) => self.running.extend(kept),
            Err(e) => {
                tracing::warn!("joining the batch failed: {e}");
                kept.into_iter().for_each(|l| l.fail(&e));
            }
        }
    }

    /// Samples `live`'s next token from `logits` and sends its text. Returns whether it goes on.
    fn sample(&self, live: &mut Live, logits: &mut [f32]) -> bool {
        match live.seq.step(&self.model, logits) {
            Ok((tok, text)) => {
                live.emit(text);
                if let Some(tok) = tok {
                    live.next = tok;
                }
                live.seq.finish.is_none()
            }
            Err(e) => {
                live.seq.finish = Some(FinishReason::Stop);
                tracing::warn!("sampling failed: {e}");
                live.failed = true;
                (live.listener)(BatchEvent::Failed(e.for_client()));
                false
            }
        }
    }

    /// One token for every running sequence; finished ones leave.
    fn decode_step(&mut self) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let step: Vec<Vec<u32>> = self.running.iter().map(|l| vec![l.next]).collect();
        let rows = step.len() as u64;
        self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.stats.decoded_rows.fetch_add(rows, Ordering::Relaxed);
        self.stats.largest.fetch_max(rows, Ordering::Relaxed);
        let result = self
            .model
            .decoder
            .forward(&step, cache, false)
            .and_then(|l| Ok(l.to_vec2::<f32>()?));
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("decode step failed: {e}");
                self.cache = None;
                std::mem::take(&mut self.running)
                    .into_iter()
                    .for_each(|l| l.fail(&e));
                return;
            }
        };
        let mut keep = Vec::new();
        let mut still = Vec::new();
        for (i, (mut live, mut row)) in std::mem::take(&mut self.running)
            .into_iter()
            .zip(logits)
            .enumerate()
        {
            if self.sample(&mut live, &mut row) {
                keep.push(i);
                still.push(live);
            } else {
                live.done(&self.model);
            }
        }
        if still.is_empty() {
            self.cache = None;
            return;
        }
        let cache = self.cache.as_mut().expect("checked above");
        if let Err(e) = cache.retain(&keep).and_then(|_| cache.trim()) {
            tracing::warn!("dropping finished sequences failed: {e}");
            self.cache = None;
            still.into_iter().for_each(|l| l.fail(&e));
            return;
        }
        self.running = still;
    }
}
