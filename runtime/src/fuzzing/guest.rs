//! Generated guests (target `guest`): a core module written from the
//! fuzzer's bytes against the skill ABI (the world's imports lowered with the
//! canonical ABI, `run`, `cabi_realloc`, one memory), wrapped into a
//! component with `wit-component` and run by the real engine. Its calls carry
//! any pointers, lengths and enum values; it loops, spins, recurses, grows
//! its memory, traps and returns bogus results. Checked:
//!
//! - the host never panics (the fuzzer sees a panic as a crash);
//! - the run ends by its deadline, with room for a loaded machine;
//! - what the host keeps for the guest stays bounded: linear memory at most
//!   the memory limit, logs at most the log limit, output at most the output
//!   limit;
//! - every host call is accounted for: each one counted against the budget
//!   left a record (a log line, for `log.emit`), up to the budget.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use airlock_host_apis::Subject;
use arbitrary::{Arbitrary, Unstructured};
use serde::Deserialize;
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, DataSection, EntityType, ExportKind, ExportSection,
    Function, FunctionSection, GlobalSection, GlobalType, ImportSection, Instruction, MemArg,
    MemorySection, MemoryType, Module, RefType, TableSection, TableType, TypeSection, ValType,
};

use super::broker::{Memory, Rules};
use super::{Violation, ensure};
use crate::engine::{Engine, EngineConfig};
use crate::limits::Limits;
use crate::run::{RunRequest, Services};

/// Where the constant strings and the fuzzer's bytes are placed.
const DATA: u32 = 1024;
/// Return areas for host calls, and the result of `run`.
const SCRATCH: u32 = 64;
/// Where the bump allocator starts.
const HEAP: u32 = 4096;

/// Strings worth passing: keys, hosts, names, JSON.
const STRINGS: &[&str] = &[
    "k",
    "../../etc/passwd",
    "deny-me",
    "https://example.com/",
    "http://169.254.169.254/latest/meta-data/",
    "GET",
    "{}",
    "github",
    "summarize",
    "\u{1b}[31m\n{\"kind\":\"run.end\"}",
];

/// A string argument: a pointer and a length.
#[derive(Debug, Arbitrary, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Text {
    /// One of [`STRINGS`].
    Known(u8),
    /// A slice of the fuzzer's data.
    Data { start: u8, len: u8 },
    /// The input `run` was given.
    Input,
    /// Anything at all.
    Wild { ptr: u32, len: u32 },
}

/// A return-area pointer.
#[derive(Debug, Arbitrary, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Ret {
    Scratch(u8),
    Wild(u32),
}

/// A call of one of the world's imports.
#[derive(Debug, Arbitrary, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Call {
    Log {
        level: u8,
        message: Text,
    },
    Get {
        key: Text,
        ret: Ret,
    },
    Put {
        key: Text,
        value: Text,
        ret: Ret,
    },
    Delete {
        key: Text,
        ret: Ret,
    },
    List {
        prefix: Text,
        ret: Ret,
    },
    Mint {
        name: Text,
        audience: Text,
        ret: Ret,
    },
    Invoke {
        name: Text,
        input: Text,
        ret: Ret,
    },
    Fetch {
        method: Text,
        url: Text,
        headers: Text,
        body: Text,
        credential: Option<Text>,
        ret: Ret,
    },
}

/// One step of `run`.
#[derive(Debug, Arbitrary, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Op {
    Call(Call),
    /// The call, `times` times (`u16::MAX`: until stopped).
    Repeat {
        times: u16,
        call: Call,
    },
    Grow {
        pages: u8,
    },
    /// Grow the function table by `elements`.
    GrowTable {
        elements: u32,
    },
    Store {
        addr: u32,
        value: u8,
    },
    Recurse {
        depth: u32,
    },
    Spin,
    Trap,
}

/// What `run` returns.
#[derive(Debug, Arbitrary, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Outcome {
    Ok(Text),
    Err(Text),
    /// A result area anywhere, with any discriminant.
    Bogus {
        at: u32,
        disc: u8,
    },
}

/// A guest to generate: also how the hostile-skill catalogue describes
/// the attacks no Rust guest makes.
#[derive(Debug, Arbitrary, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guest {
    /// Initial memory, in pages past the first (at most 3).
    #[serde(default)]
    pub pages: u8,
    /// Bytes placed in memory for `data` texts.
    #[serde(default)]
    pub data: Vec<u8>,
    /// `cabi_realloc` answers with this instead of allocating.
    #[serde(default)]
    pub lying_realloc: Option<u32>,
    pub ops: Vec<Op>,
    pub outcome: Outcome,
}

// Function indices: the imports in this order, then the defined functions.
const IMPORTS: &[(&str, &str, usize)] = &[
    ("airlock:skill/log@0.1.0", "emit", 3),
    ("airlock:skill/storage@0.1.0", "get", 3),
    ("airlock:skill/storage@0.1.0", "put", 5),
    ("airlock:skill/storage@0.1.0", "delete", 3),
    ("airlock:skill/storage@0.1.0", "list-keys", 3),
    ("airlock:skill/secrets@0.1.0", "mint-token", 5),
    ("airlock:skill/tools@0.1.0", "invoke", 5),
    ("airlock:skill/http@0.1.0", "fetch", 12),
];
const F_RUN: u32 = 8;
const F_REALLOC: u32 = 9;
const F_RECURSE: u32 = 10;

fn mem(offset: u64, align: u32) -> MemArg {
    MemArg {
        offset,
        align,
        memory_index: 0,
    }
}

impl Guest {
    /// Where each of [`STRINGS`] sits, then the fuzzer's data.
    fn layout(&self) -> (Vec<u8>, Vec<(u32, u32)>) {
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        for s in STRINGS {
            spans.push((DATA + bytes.len() as u32, s.len() as u32));
            bytes.extend_from_slice(s.as_bytes());
        }
        spans.push((DATA + bytes.len() as u32, 0));
        bytes.extend(self.data.iter().take(1024));
        (bytes, spans)
    }

    fn text(&self, f: &mut Function, text: &Text, spans: &[(u32, u32)]) {
        let (ptr, len) = match text {
            Text::Known(n) => spans
                .get(usize::from(*n) % STRINGS.len())
                .copied()
                .unwrap_or((DATA, 0)),
            Text::Data { start, len } => {
                let base = spans.last().map_or(DATA, |s| s.0);
                let available = self.data.len().min(1024) as u32;
                let start = u32::from(*start).min(available);
                (base + start, u32::from(*len).min(available - start))
            }
            Text::Input => {
                f.instruction(&Instruction::LocalGet(0));
                f.instruction(&Instruction::LocalGet(1));
                return;
            }
            Text::Wild { ptr, len } => (*ptr, *len),
        };
        f.instruction(&Instruction::I32Const(ptr as i32));
        f.instruction(&Instruction::I32Const(len as i32));
    }

    fn ret(f: &mut Function, ret: &Ret) {
        let at = match ret {
            Ret::Scratch(n) => SCRATCH + 16 * u32::from(n % 32),
            Ret::Wild(at) => *at,
        };
        f.instruction(&Instruction::I32Const(at as i32));
    }

    fn call(&self, f: &mut Function, call: &Call, spans: &[(u32, u32)]) {
        let index = match call {
            Call::Log { level, message } => {
                f.instruction(&Instruction::I32Const(i32::from(level % 5)));
                self.text(f, message, spans);
                0
            }
            Call::Get { key, ret } => {
                self.text(f, key, spans);
                Self::ret(f, ret);
                1
            }
            Call::Put { key, value, ret } => {
                self.text(f, key, spans);
                self.text(f, value, spans);
                Self::ret(f, ret);
                2
            }
            Call::Delete { key, ret } => {
                self.text(f, key, spans);
                Self::ret(f, ret);
                3
            }
            Call::List { prefix, ret } => {
                self.text(f, prefix, spans);
                Self::ret(f, ret);
                4
            }
            Call::Mint {
                name,
                audience,
                ret,
            } => {
                self.text(f, name, spans);
                self.text(f, audience, spans);
                Self::ret(f, ret);
                5
            }
            Call::Invoke { name, input, ret } => {
                self.text(f, name, spans);
                self.text(f, input, spans);
                Self::ret(f, ret);
                6
            }
            Call::Fetch {
                method,
                url,
                headers,
                body,
                credential,
                ret,
            } => {
                self.text(f, method, spans);
                self.text(f, url, spans);
                self.text(f, headers, spans);
                self.text(f, body, spans);
                match credential {
                    Some(name) => {
                        f.instruction(&Instruction::I32Const(1));
                        self.text(f, name, spans);
                    }
                    None => {
                        for _ in 0..3 {
                            f.instruction(&Instruction::I32Const(0));
                        }
                    }
                }
                Self::ret(f, ret);
                7
            }
        };
        f.instruction(&Instruction::Call(index));
    }

    fn run_body(&self, spans: &[(u32, u32)]) -> Function {
        // Locals: the input's pointer and length, then a loop counter.
        let mut f = Function::new([(1, ValType::I32)]);
        for op in self.ops.iter().take(32) {
            match op {
                Op::Call(call) => self.call(&mut f, call, spans),
                Op::Repeat { times, call } => {
                    f.instruction(&Instruction::I32Const(i32::from(*times)));
                    f.instruction(&Instruction::LocalSet(2));
                    f.instruction(&Instruction::Loop(BlockType::Empty));
                    self.call(&mut f, call, spans);
                    if *times == u16::MAX {
                        f.instruction(&Instruction::Br(0));
                    } else {
                        f.instruction(&Instruction::LocalGet(2));
                        f.instruction(&Instruction::I32Const(1));
                        f.instruction(&Instruction::I32Sub);
                        f.instruction(&Instruction::LocalTee(2));
                        f.instruction(&Instruction::BrIf(0));
                    }
                    f.instruction(&Instruction::End);
                }
                Op::Grow { pages } => {
                    f.instruction(&Instruction::I32Const(i32::from(pages % 16)));
                    f.instruction(&Instruction::MemoryGrow(0));
                    f.instruction(&Instruction::Drop);
                }
                Op::GrowTable { elements } => {
                    f.instruction(&Instruction::RefNull(wasm_encoder::HeapType::FUNC));
                    f.instruction(&Instruction::I32Const(*elements as i32));
                    f.instruction(&Instruction::TableGrow(0));
                    f.instruction(&Instruction::Drop);
                }
                Op::Store { addr, value } => {
                    f.instruction(&Instruction::I32Const(*addr as i32));
                    f.instruction(&Instruction::I32Const(i32::from(*value)));
                    f.instruction(&Instruction::I32Store8(mem(0, 0)));
                }
                Op::Recurse { depth } => {
                    f.instruction(&Instruction::I32Const(*depth as i32));
                    f.instruction(&Instruction::Call(F_RECURSE));
                }
                Op::Spin => {
                    f.instruction(&Instruction::Loop(BlockType::Empty));
                    f.instruction(&Instruction::Br(0));
                    f.instruction(&Instruction::End);
                }
                Op::Trap => {
                    f.instruction(&Instruction::Unreachable);
                }
            }
        }
        let (disc, text, at) = match &self.outcome {
            Outcome::Ok(text) => (0, Some(text), SCRATCH),
            Outcome::Err(text) => (1, Some(text), SCRATCH),
            Outcome::Bogus { at, disc } => (i32::from(*disc), None, *at),
        };
        f.instruction(&Instruction::I32Const(at as i32));
        f.instruction(&Instruction::I32Const(disc));
        f.instruction(&Instruction::I32Store8(mem(0, 0)));
        if let Some(text) = text {
            // Pointer at +4, length at +8.
            self.text(&mut f, text, spans);
            f.instruction(&Instruction::LocalSet(2));
            f.instruction(&Instruction::LocalSet(0));
            f.instruction(&Instruction::I32Const(at as i32));
            f.instruction(&Instruction::LocalGet(0));
            f.instruction(&Instruction::I32Store(mem(4, 2)));
            f.instruction(&Instruction::I32Const(at as i32));
            f.instruction(&Instruction::LocalGet(2));
            f.instruction(&Instruction::I32Store(mem(8, 2)));
        }
        f.instruction(&Instruction::I32Const(at as i32));
        f.instruction(&Instruction::End);
        f
    }

    /// A bump allocator that grows memory as it goes, or a liar.
    fn realloc_body(&self) -> Function {
        let mut f = Function::new([(1, ValType::I32)]);
        if let Some(answer) = self.lying_realloc {
            f.instruction(&Instruction::I32Const(answer as i32));
            f.instruction(&Instruction::End);
            return f;
        }
        for i in [
            Instruction::GlobalGet(0),
            Instruction::I32Const(7),
            Instruction::I32Add,
            Instruction::I32Const(-8),
            Instruction::I32And,
            Instruction::LocalTee(4),
            Instruction::LocalGet(3),
            Instruction::I32Add,
            Instruction::GlobalSet(0),
            Instruction::Block(BlockType::Empty),
            Instruction::Loop(BlockType::Empty),
            Instruction::GlobalGet(0),
            Instruction::MemorySize(0),
            Instruction::I32Const(16),
            Instruction::I32Shl,
            Instruction::I32LeU,
            Instruction::BrIf(1),
            Instruction::I32Const(1),
            Instruction::MemoryGrow(0),
            Instruction::I32Const(-1),
            Instruction::I32Eq,
            Instruction::If(BlockType::Empty),
            Instruction::Unreachable,
            Instruction::End,
            Instruction::Br(0),
            Instruction::End,
            Instruction::End,
            Instruction::LocalGet(4),
            Instruction::End,
        ] {
            f.instruction(&i);
        }
        f
    }

    fn recurse_body() -> Function {
        let mut f = Function::new([]);
        for i in [
            Instruction::LocalGet(0),
            Instruction::If(BlockType::Empty),
            Instruction::LocalGet(0),
            Instruction::I32Const(1),
            Instruction::I32Sub,
            Instruction::Call(F_RECURSE),
            Instruction::End,
            Instruction::End,
        ] {
            f.instruction(&i);
        }
        f
    }

    /// The core module.
    fn module(&self) -> Vec<u8> {
        let mut types = TypeSection::new();
        let arities = [3usize, 5, 12];
        for n in arities {
            types.ty().function(vec![ValType::I32; n], []);
        }
        types
            .ty()
            .function([ValType::I32, ValType::I32], [ValType::I32]); // 3: run
        types.ty().function([ValType::I32; 4], [ValType::I32]); // 4: cabi_realloc
        types.ty().function([ValType::I32], []); // 5: recurse
        let mut imports = ImportSection::new();
        for (module, name, arity) in IMPORTS {
            let ty = arities.iter().position(|a| a == arity).unwrap_or(0) as u32;
            imports.import(module, name, EntityType::Function(ty));
        }
        let mut functions = FunctionSection::new();
        functions.function(3).function(4).function(5);
        let mut tables = TableSection::new();
        tables.table(TableType {
            element_type: RefType::FUNCREF,
            minimum: 1,
            maximum: None,
            table64: false,
            shared: false,
        });
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1 + u64::from(self.pages % 4),
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        let mut globals = GlobalSection::new();
        globals.global(
            GlobalType {
                val_type: ValType::I32,
                mutable: true,
                shared: false,
            },
            &ConstExpr::i32_const(HEAP as i32),
        );
        let mut exports = ExportSection::new();
        exports
            .export("memory", ExportKind::Memory, 0)
            .export("run", ExportKind::Func, F_RUN)
            .export("cabi_realloc", ExportKind::Func, F_REALLOC);
        let (bytes, spans) = self.layout();
        let mut code = CodeSection::new();
        code.function(&self.run_body(&spans))
            .function(&self.realloc_body())
            .function(&Self::recurse_body());
        let mut data = DataSection::new();
        data.active(0, &ConstExpr::i32_const(DATA as i32), bytes);
        let mut module = Module::new();
        module
            .section(&types)
            .section(&imports)
            .section(&functions)
            .section(&tables)
            .section(&memories)
            .section(&globals)
            .section(&exports)
            .section(&code)
            .section(&data);
        module.finish()
    }
}

/// The `airlock:skill` world, parsed once.
fn world() -> Result<&'static (wit_parser::Resolve, wit_parser::WorldId), Violation> {
    static WORLD: OnceLock<Result<(wit_parser::Resolve, wit_parser::WorldId), String>> =
        OnceLock::new();
    let parsed = WORLD.get_or_init(|| {
        let mut map = wit_parser::SourceMap::default();
        for (name, text) in airlock_host_apis::WIT {
            map.push_str(name, *text);
        }
        let group = map.parse().map_err(|(_, e)| e.to_string())?;
        let mut resolve = wit_parser::Resolve::new();
        let package = resolve.push_group(group).map_err(|e| e.to_string())?;
        let world = resolve
            .select_world(&[package], Some("skill"))
            .map_err(|e| e.to_string())?;
        Ok((resolve, world))
    });
    parsed
        .as_ref()
        .map_err(|e| Violation(format!("the world's WIT: {e}")))
}

/// The component for a generated guest.
pub fn component(guest: &Guest) -> Result<Vec<u8>, Violation> {
    let (resolve, world) = world()?;
    let mut module = guest.module();
    wit_component::embed_component_metadata(
        &mut module,
        resolve,
        *world,
        wit_component::StringEncoding::UTF8,
    )
    .map_err(|e| Violation(format!("embedding the world: {e:#}")))?;
    wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| {
            Violation(format!(
                "the generator wrote a module that is not a skill: {e:#}"
            ))
        })
}

fn engine() -> Result<&'static Arc<Engine>, Violation> {
    static ENGINE: OnceLock<Result<Arc<Engine>, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Engine::new(EngineConfig {
                max_instances: 8,
                max_memory: 16 << 20,
                keep_resident: 64 << 10,
                max_loaded: 16,
                ..EngineConfig::default()
            })
            .map(Arc::new)
            .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Violation(format!("engine: {e}")))
}

fn limits() -> Limits {
    Limits {
        deadline: Duration::from_millis(200),
        memory: 4 << 20,
        host_calls: 200,
        log: 16 << 10,
        output: 64 << 10,
        ..Limits::default()
    }
}

pub fn check(bytes: &[u8]) -> Result<(), Violation> {
    let Ok(guest) = Guest::arbitrary(&mut Unstructured::new(bytes)) else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Violation(format!("no runtime: {e}")))?;
    runtime.block_on(run(&guest, "{\"q\":1}")).map(|_| ())
}

async fn run(guest: &Guest, input: &str) -> Result<crate::run::RunReport, Violation> {
    let component = component(guest)?;
    let engine = engine()?;
    let skill = engine
        .load(&component)
        .map_err(|e| Violation(format!("a valid skill component was refused: {e}")))?;
    let limits = limits();
    let mut subject = Subject::default();
    subject.skill.name = "generated".into();
    let request = RunRequest {
        input: input.to_string(),
        subject,
        limits: limits.clone(),
        session: None,
        ledger: None,
        stop: None,
    };
    let services = Services {
        broker: Arc::new(Rules),
        storage: Arc::new(Memory::default()),
        ..Services::default()
    };
    let started = Instant::now();
    let report = engine.run(&skill, request, &services).await;
    let took = started.elapsed();
    ensure!(
        took < limits.deadline + Duration::from_secs(5),
        "the run took {took:?}, past its deadline of {:?}",
        limits.deadline
    );
    ensure!(
        report.usage.peak_memory_bytes <= limits.memory,
        "linear memory reached {} bytes, over the limit of {}",
        report.usage.peak_memory_bytes,
        limits.memory
    );
    let kept: usize = report.logs.iter().map(|l| l.message.len()).sum();
    ensure!(
        kept as u64 <= limits.log,
        "{kept} bytes of logs kept, over the limit of {}",
        limits.log
    );
    ensure!(
        report
            .output
            .as_ref()
            .is_none_or(|o| o.len() as u64 <= limits.output),
        "an output over the limit was kept"
    );
    let accounted = report.decisions.len() as u64 + report.logs.len() as u64 + report.logs_dropped;
    ensure!(
        accounted == report.usage.host_calls.min(limits.host_calls),
        "{} host calls counted, {} records and {} log lines: a call went unrecorded",
        report.usage.host_calls,
        report.decisions.len(),
        report.logs.len() as u64 + report.logs_dropped
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunStatus;

    fn guest(ops: Vec<Op>, outcome: Outcome) -> Guest {
        Guest {
            pages: 0,
            data: b"hello, data".to_vec(),
            lying_realloc: None,
            ops,
            outcome,
        }
    }

    fn run_guest(guest: &Guest) -> crate::run::RunReport {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(run(guest, "{\"q\":1}"))
            .unwrap_or_else(|v| panic!("{v}"))
    }

    /// A well-formed guest: its calls reach the broker and are recorded,
    /// its log line and its output come back.
    #[test]
    fn a_generated_guest_runs_and_every_call_is_recorded() {
        let ops = vec![
            Op::Call(Call::Log {
                level: 1,
                message: Text::Known(0),
            }),
            Op::Call(Call::Put {
                key: Text::Known(0),
                value: Text::Input,
                ret: Ret::Scratch(0),
            }),
            Op::Call(Call::Get {
                key: Text::Known(0),
                ret: Ret::Scratch(1),
            }),
            Op::Call(Call::Get {
                key: Text::Known(2),
                ret: Ret::Scratch(2),
            }),
            Op::Call(Call::Fetch {
                method: Text::Known(5),
                url: Text::Known(3),
                headers: Text::Wild { ptr: 0, len: 0 },
                body: Text::Data { start: 0, len: 5 },
                credential: None,
                ret: Ret::Scratch(3),
            }),
            Op::Call(Call::Mint {
                name: Text::Known(7),
                audience: Text::Known(3),
                ret: Ret::Scratch(4),
            }),
        ];
        let report = run_guest(&guest(ops, Outcome::Ok(Text::Data { start: 0, len: 5 })));
        assert_eq!(report.status, RunStatus::Ok, "{:?}", report.error);
        assert_eq!(report.output.as_deref(), Some("hello"));
        assert_eq!(report.logs.len(), 1);
        let actions: Vec<&str> = report.decisions.iter().map(|d| d.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "storage.write",
                "storage.read",
                "storage.read",
                "http.request",
                "secret.mint"
            ]
        );
    }

    /// Each way a guest can misbehave ends as a named failure, never a
    /// host panic, and within the deadline.
    #[test]
    fn hostile_generated_guests_end_cleanly() {
        let flood = Op::Repeat {
            times: u16::MAX,
            call: Call::Get {
                key: Text::Known(0),
                ret: Ret::Scratch(0),
            },
        };
        let cases: Vec<(Guest, RunStatus)> = vec![
            (
                guest(vec![Op::Spin], Outcome::Ok(Text::Known(6))),
                RunStatus::Limit,
            ),
            (
                guest(vec![flood], Outcome::Ok(Text::Known(6))),
                RunStatus::Limit,
            ),
            (
                guest(
                    vec![Op::Recurse { depth: u32::MAX }],
                    Outcome::Ok(Text::Known(6)),
                ),
                RunStatus::Limit,
            ),
            (
                guest(vec![Op::Trap], Outcome::Ok(Text::Known(6))),
                RunStatus::Trap,
            ),
            (
                guest(
                    vec![Op::Call(Call::Log {
                        level: 4,
                        message: Text::Known(0),
                    })],
                    Outcome::Ok(Text::Known(6)),
                ),
                RunStatus::Trap,
            ),
            (
                guest(
                    vec![Op::Call(Call::Get {
                        key: Text::Wild {
                            ptr: u32::MAX - 2,
                            len: 100,
                        },
                        ret: Ret::Scratch(0),
                    })],
                    Outcome::Ok(Text::Known(6)),
                ),
                RunStatus::Trap,
            ),
            (
                guest(
                    vec![Op::Call(Call::Get {
                        key: Text::Known(0),
                        ret: Ret::Wild(u32::MAX),
                    })],
                    Outcome::Ok(Text::Known(6)),
                ),
                RunStatus::Trap,
            ),
            (
                guest(vec![], Outcome::Bogus { at: 64, disc: 7 }),
                RunStatus::Trap,
            ),
            (
                guest(
                    vec![],
                    Outcome::Ok(Text::Wild {
                        ptr: 0,
                        len: u32::MAX,
                    }),
                ),
                RunStatus::Trap,
            ),
            (
                guest(
                    (0..8).map(|_| Op::Grow { pages: 15 }).collect(),
                    Outcome::Ok(Text::Known(6)),
                ),
                RunStatus::Limit,
            ),
        ];
        for (guest, want) in cases {
            let report = run_guest(&guest);
            assert_eq!(report.status, want, "{guest:?}: {:?}", report.error);
        }
    }

    #[test]
    fn a_lying_allocator_cannot_make_the_host_write_outside_memory() {
        let mut g = guest(
            vec![
                Op::Call(Call::Put {
                    key: Text::Known(0),
                    value: Text::Input,
                    ret: Ret::Scratch(0),
                }),
                Op::Call(Call::Get {
                    key: Text::Known(0),
                    ret: Ret::Scratch(1),
                }),
            ],
            Outcome::Ok(Text::Known(6)),
        );
        g.lying_realloc = Some(u32::MAX - 4);
        let report = run_guest(&g);
        assert_eq!(report.status, RunStatus::Trap, "{:?}", report.error);
    }

    #[test]
    fn the_seed_corpus_holds() {
        for (name, bytes) in super::super::corpus::seeds("guest") {
            if let Err(v) = super::check(&bytes) {
                panic!("{name}: {v}");
            }
        }
    }
}
