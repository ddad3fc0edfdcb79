//! The engine: one wasmtime engine configured for skills, the linker, the
//! compiled-artifact cache, and an `InstancePre` per skill digest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use airlock_host_apis::SkillPre;
use serde::Serialize;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use crate::Error;
use crate::cache::ArtifactCache;
use crate::digest::SkillDigest;
use crate::inspect::{self, Inspection};
use crate::instance::InstanceState;

/// How the engine is built. Fixed for the engine's life.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Pre-allocate instance slots (fast instantiation, copy-on-write memory
    /// images). On by default; off uses on-demand allocation.
    pub pooling: bool,
    /// Instances that can be alive at once (pooling only).
    pub max_instances: u32,
    /// The most linear memory any instance may be given, in bytes: the size
    /// of a pool slot. An instance's own memory limit must not exceed it.
    pub max_memory: u64,
    /// Largest component accepted, in bytes.
    pub max_component_size: u64,
    /// Where compiled artifacts are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Granularity of deadlines and of yielding to other tasks.
    pub epoch_tick: Duration,
    /// Bytes of each linear memory to keep resident (reset with `memset`
    /// instead of `madvise`) when a pool slot is reused.
    pub keep_resident: usize,
    /// Compiled skills kept in memory; past this, the longest-kept is
    /// dropped (and compiled or read from the cache again when next used).
    pub max_loaded: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pooling: true,
            max_instances: 1000,
            max_memory: 1 << 30,
            max_component_size: 128 << 20,
            cache_dir: None,
            epoch_tick: Duration::from_millis(5),
            keep_resident: 1 << 20,
            max_loaded: 512,
        }
    }
}

/// How a skill's compiled code was obtained for this load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum CompileSource {
    /// Already loaded in this process.
    Memory,
    /// Loaded from the on-disk cache.
    Cache { load_us: u64 },
    /// Compiled now.
    Compiled { compile_us: u64 },
}

/// A skill ready to instantiate: inspected, compiled and linked.
pub struct LoadedSkill {
    pub inspection: Inspection,
    pub(crate) pre: SkillPre<InstanceState>,
    pub source: CompileSource,
}

impl std::fmt::Debug for LoadedSkill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSkill")
            .field("inspection", &self.inspection)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl LoadedSkill {
    pub fn digest(&self) -> SkillDigest {
        self.inspection.digest
    }
}

/// Increments the engine's epoch until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine, tick: Duration) -> Result<Self, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("airlock-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| Error::io("starting the epoch thread", e))?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The wasm engine for skills.
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Linker<InstanceState>,
    cache: Option<ArtifactCache>,
    skills: Mutex<Loaded>,
    config: EngineConfig,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Deepest wasm call stack, in bytes.
const MAX_WASM_STACK: usize = 512 << 10;
/// The fiber stack a guest runs on: its wasm stack plus room for host calls.
const ASYNC_STACK: usize = 1 << 20;

fn wasmtime_config(config: &EngineConfig) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .memory_init_cow(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK)
        // Proposals skills do not need stay off, as in the inspector: threads,
        // GC, exceptions and component-model async are not compiled into this
        // wasmtime at all; the rest are turned off here.
        .wasm_shared_everything_threads(false)
        .shared_memory(false)
        .wasm_gc(false)
        .wasm_memory64(false)
        .wasm_stack_switching(false)
        .concurrency_support(false);
    if config.pooling {
        let instances = config.max_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .total_stacks(instances)
            .max_memory_size(usize::try_from(config.max_memory).unwrap_or(usize::MAX))
            .linear_memory_keep_resident(config.keep_resident)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self, Error> {
        let engine = wasmtime::Engine::new(&wasmtime_config(&config))
            .map_err(|e| Error::Engine(format!("configuring wasmtime: {e}")))?;
        let linker = crate::instance::linker(&engine)
            .map_err(|e| Error::Engine(format!("linking host functions: {e}")))?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(ArtifactCache::open(dir, &engine)?),
            None => None,
        };
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        Ok(Engine {
            engine,
            linker,
            cache,
            skills: Mutex::new(Loaded::default()),
            config,
            _ticker: ticker,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Inspect, compile (or load from cache) and link a component.
    ///
    /// CPU-heavy on a first load: call it off the async executor.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedSkill>, Error> {
        let digest = SkillDigest::of(bytes);
        if let Some(skill) = self.loaded(&digest) {
            return Ok(skill);
        }
        let inspection = inspect::inspect(bytes, self.config.max_component_size)?;
        let started = Instant::now();
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.load(&self.engine, &digest));
        let (component, source) = match cached {
            Some(component) => (
                component,
                CompileSource::Cache {
                    load_us: micros(started.elapsed()),
                },
            ),
            None => {
                let component = Component::new(&self.engine, bytes)
                    .map_err(|e| Error::Incompatible(format!("compiling failed: {e}")))?;
                let compile_us = micros(started.elapsed());
                if let Some(Err(e)) = self.cache.as_ref().map(|c| c.store(&digest, &component)) {
                    tracing::warn!(error = %e, "could not cache the compiled skill");
                }
                (component, CompileSource::Compiled { compile_us })
            }
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| Error::Incompatible(format!("{e}")))?;
        let pre = SkillPre::new(pre).map_err(|e| {
            Error::Incompatible(format!(
                "its exports do not match the `airlock:skill/skill` world: {e}"
            ))
        })?;
        let skill = Arc::new(LoadedSkill {
            inspection,
            pre,
            source,
        });
        self.lock_skills()
            .insert(digest, skill.clone(), self.config.max_loaded);
        Ok(skill)
    }

    /// A skill already loaded in this process, by digest.
    pub fn loaded(&self, digest: &SkillDigest) -> Option<Arc<LoadedSkill>> {
        self.lock_skills().map.get(digest).map(|skill| {
            Arc::new(LoadedSkill {
                inspection: skill.inspection.clone(),
                pre: skill.pre.clone(),
                source: CompileSource::Memory,
            })
        })
    }

    fn lock_skills(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.skills.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Compiled skills in memory, oldest first.
#[derive(Default)]
struct Loaded {
    map: HashMap<SkillDigest, Arc<LoadedSkill>>,
    order: std::collections::VecDeque<SkillDigest>,
}

impl Loaded {
    fn insert(&mut self, digest: SkillDigest, skill: Arc<LoadedSkill>, max: usize) {
        if self.map.insert(digest, skill).is_none() {
            self.order.push_back(digest);
        }
        while self.map.len() > max.max(1) {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&oldest);
        }
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
