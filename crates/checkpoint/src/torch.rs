//! PyTorch checkpoints (`pytorch_model.bin`, what `torch.save` writes: a zip of `data.pkl` and one raw storage
//! per tensor) read without running pickle code.
//!
//! A pickle is a program: unpickling one with Python runs whatever callables it names, which is how a published
//! `.bin` can execute code on the machine that loads it. This reader interprets only the opcodes a state dict
//! needs and accepts only the globals that rebuild tensors and plain containers (`torch._utils._rebuild_tensor_v2`,
//! `_rebuild_parameter`, the typed storages, `collections.OrderedDict`); any other opcode or global is refused by
//! name, before anything is built from it. Nothing is ever called: a "reduce" of an allowed global is recognized
//! as data. Memo entries are shared, not copied, and every length is checked against the bytes present, so a
//! hostile file costs at most memory in proportion to its size.
//!
//! The tensors' bytes are not read here: each becomes a [`TensorEntry`] giving its absolute byte range inside
//! the zip file (torch stores storages uncompressed), read by the loader like a safetensors tensor.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use crate::safetensors_header::{Header, TensorEntry};
use crate::CheckpointError;

/// How to turn a `.bin` into safetensors, for every refusal.
pub const CONVERT_HINT: &str = "if you trust the file, convert it to safetensors in Python with \
     `AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)` (a .bin of \
     plain tensors needs no conversion: vibecheck reads it, and `vibecheck convert DIR OUT` rewrites it)";

/// The largest `data.pkl` read: a state dict's pickle holds names and shapes, well under a megabyte per thousand
/// tensors.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// A tensor as the pickle describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickledTensor {
    pub name: String,
    /// The safetensors name of its dtype (`F32`, `BF16`, …).
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    /// The storage's key: its bytes are the zip entry `<archive>/data/<key>`.
    pub storage: String,
    /// The first element's index in the storage.
    pub offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(&'static str),
}

/// Torch's typed storages and the safetensors dtype each holds.
const STORAGES: [(&str, &str); 10] = [
    ("FloatStorage", "F32"),
    ("HalfStorage", "F16"),
    ("BFloat16Storage", "BF16"),
    ("DoubleStorage", "F64"),
    ("LongStorage", "I64"),
    ("IntStorage", "I32"),
    ("ShortStorage", "I16"),
    ("CharStorage", "I8"),
    ("ByteStorage", "U8"),
    ("BoolStorage", "BOOL"),
];

fn global(module: &str, name: &str) -> Result<Global, String> {
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", s) => STORAGES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, d)| Global::Storage(d))
            .ok_or_else(|| refused_global(module, name)),
        _ => Err(refused_global(module, name)),
    }
}

fn refused_global(module: &str, name: &str) -> String {
    format!(
        "the pickle names `{module}.{name}`, which is neither a tensor nor a plain container; a pickle's globals \
         are code that Python would run on loading, and vibecheck does not execute pickles"
    )
}

/// A container being built. Once put inside another it is frozen: a state dict's pickle fills each container
/// before nesting it, so a later change can only come from a shared or self-referencing object (a cycle), which is
/// refused; with the depth kept at each nesting, no value is nested deeper than [`MAX_DEPTH`] (recursion over a
/// value, its drop included, stays shallow).
#[derive(Default)]
struct Cont<T> {
    items: RefCell<T>,
    frozen: std::cell::Cell<bool>,
    depth: std::cell::Cell<u32>,
}

/// Containers nested deeper than this are refused (a state dict nests four: dict, `_metadata`, entries, values).
const MAX_DEPTH: u32 = 32;

#[derive(Clone)]
enum Val {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    /// Items and nesting depth.
    Tuple(Rc<Vec<Val>>, u32),
    List(Rc<Cont<Vec<Val>>>),
    Dict(Rc<Cont<Vec<(Val, Val)>>>),
    Global(Global),
    Storage {
        dtype: &'static str,
        key: Rc<str>,
    },
    Tensor(Rc<(&'static str, Vec<usize>, Rc<str>, usize)>),
    Mark,
}

/// What a value is, for errors (never the value itself: it may be large or deep).
fn describe(v: &Val) -> &'static str {
    match v {
        Val::None => "None",
        Val::Bool => "a bool",
        Val::Int(_) => "an integer",
        Val::Float => "a float",
        Val::Str(_) => "a string",
        Val::Tuple(..) => "a tuple",
        Val::List(_) => "a list",
        Val::Dict(_) => "a dict",
        Val::Global(_) => "a global",
        Val::Storage { .. } => "a storage reference",
        Val::Tensor(_) => "a tensor",
        Val::Mark => "a MARK",
    }
}

/// Freezes `v` (when it is a container) as it is nested in another; its depth.
fn nest(v: &Val) -> u32 {
    match v {
        Val::List(c) => {
            c.frozen.set(true);
            c.depth.get()
        }
        Val::Dict(c) => {
            c.frozen.set(true);
            c.depth.get()
        }
        Val::Tuple(_, d) => *d,
        _ => 0,
    }
}

/// Checks that `into` may still change and that nesting `items` in it stays within [`MAX_DEPTH`]; records the
/// new depth.
fn nest_into<T>(into: &Cont<T>, items: &[&Val]) -> Result<(), String> {
    let mut depth = into.depth.get();
    for v in items {
        depth = depth.max(nest(v) + 1);
    }
    // Checked after nesting the items: a container nested into itself is frozen by now too.
    if into.frozen.get() {
        return Err(
            "the pickle changes a container after nesting it in another (a shared or self-referencing object), \
             which a state dict never does"
                .into(),
        );
    }
    if depth > MAX_DEPTH {
        return Err(format!(
            "the pickle nests containers more than {MAX_DEPTH} deep"
        ));
    }
    into.depth.set(depth);
    Ok(())
}

/// A tuple of `items` (each nested, so frozen), refused past [`MAX_DEPTH`].
fn tuple(items: Vec<Val>) -> Result<Val, String> {
    let depth = items.iter().map(nest).max().unwrap_or(0) + 1;
    if depth > MAX_DEPTH {
        return Err(format!(
            "the pickle nests containers more than {MAX_DEPTH} deep"
        ));
    }
    Ok(Val::Tuple(Rc::new(items), depth))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "the pickle ends inside an opcode's argument at byte {}",
                    self.at
                )
            })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn le(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.bytes[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("a GLOBAL opcode's name has no end of line")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "a GLOBAL name is not UTF-8")?;
        self.at += n + 1;
        Ok(s)
    }
}

fn as_usize(v: &Val, what: &str) -> Result<usize, String> {
    match v {
        Val::Int(i) if *i >= 0 && *i <= 1 << 48 => Ok(*i as usize),
        other => Err(format!(
            "{what} is {}, not a non-negative integer",
            describe(other)
        )),
    }
}

fn dims(v: &Val, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Val::Tuple(t, _) => t.iter().map(|d| as_usize(d, what)).collect(),
        other => Err(format!("{what} is {}, not a tuple", describe(other))),
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])` as data.
fn rebuild_tensor(args: &Val) -> Result<Val, String> {
    let Val::Tuple(a, _) = args else {
        return Err("_rebuild_tensor_v2 is not given a tuple".into());
    };
    if a.len() < 4 {
        return Err("_rebuild_tensor_v2 is given fewer than 4 arguments".into());
    }
    let Val::Storage { dtype, key } = &a[0] else {
        return Err(format!(
            "_rebuild_tensor_v2's storage is {}, not a storage reference",
            describe(&a[0])
        ));
    };
    let offset = as_usize(&a[1], "a tensor's storage offset")?;
    let shape = dims(&a[2], "a tensor's size")?;
    let stride = dims(&a[3], "a tensor's stride")?;
    if shape.len() != stride.len() {
        return Err("a tensor's size and stride differ in length".into());
    }
    // Only row-major (contiguous) tensors: their bytes are one range of the storage.
    let mut expect = 1usize;
    for (d, s) in shape.iter().zip(&stride).rev() {
        if *d > 1 && *s != expect {
            return Err(format!(
                "a tensor of size {shape:?} has stride {stride:?}: not contiguous (save it after .contiguous())"
            ));
        }
        expect = expect.checked_mul(*d).ok_or("a tensor's size overflows")?;
    }
    Ok(Val::Tensor(Rc::new((dtype, shape, key.clone(), offset))))
}

fn pop(stack: &mut Vec<Val>) -> Result<Val, String> {
    stack
        .pop()
        .ok_or_else(|| "the pickle pops an empty stack".into())
}

fn pop_mark(stack: &mut Vec<Val>) -> Result<Vec<Val>, String> {
    let at = stack
        .iter()
        .rposition(|v| matches!(v, Val::Mark))
        .ok_or("the pickle has no MARK where one is needed")?;
    let items = stack.split_off(at + 1);
    stack.pop();
    Ok(items)
}

/// Interprets a state dict's pickle (as data, never calling anything) and returns its tensors, in file order.
/// The error says what was refused and why; the caller names the file.
pub fn parse_pickle(bytes: &[u8]) -> Result<Vec<PickledTensor>, String> {
    let mut r = Reader { bytes, at: 0 };
    let mut stack: Vec<Val> = Vec::new();
    let mut memo: HashMap<u64, Val> = HashMap::new();
    loop {
        let at = r.at;
        let op = r.u8()?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    return Err(format!("pickle protocol {proto} is newer than any Python writes"));
                }
            }
            0x95 => {
                r.take(8)?; // FRAME: a length hint.
            }
            b'}' => stack.push(Val::Dict(Rc::default())),
            b']' => stack.push(Val::List(Rc::default())),
            b')' => stack.push(Val::Tuple(Rc::default(), 1)),
            b'(' => stack.push(Val::Mark),
            b'N' => stack.push(Val::None),
            0x88 => stack.push(Val::Bool),
            0x89 => stack.push(Val::Bool),
            b'K' => stack.push(Val::Int(r.le(1)? as i64)),
            b'M' => stack.push(Val::Int(r.le(2)? as i64)),
            b'J' => stack.push(Val::Int(r.le(4)? as u32 as i32 as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                if n > 8 {
                    return Err(format!("a LONG1 of {n} bytes is larger than any tensor field"));
                }
                let raw = r.take(n)?;
                let mut v = raw
                    .iter()
                    .rev()
                    .fold(0i64, |acc, &b| (acc << 8) | i64::from(b));
                if n > 0 && n < 8 && raw[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Val::Int(v));
            }
            b'G' => {
                r.take(8)?;
                stack.push(Val::Float);
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => r.le(4)?,
                    0x8c => r.le(1)?,
                    _ => r.le(8)?,
                };
                let n = usize::try_from(n).map_err(|_| "a string length overflows")?;
                let s = std::str::from_utf8(r.take(n)?).map_err(|_| "a pickled string is not UTF-8")?;
                stack.push(Val::Str(s.into()));
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Val::Global(global(module, name)?));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Val::Str(m), Val::Str(n)) => stack.push(Val::Global(global(&m, &n)?)),
                    _ => return Err("STACK_GLOBAL is not given two strings".into()),
                }
            }
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => r.le(1)?,
                    b'r' => r.le(4)?,
                    _ => memo.len() as u64,
                };
                let top = stack.last().ok_or("the pickle memoizes an empty stack")?;
                memo.insert(key, top.clone());
            }
            b'h' | b'j' => {
                let key = if op == b'h' { r.le(1)? } else { r.le(4)? };
                let v = memo
                    .get(&key)
                    .ok_or_else(|| format!("the pickle reads memo entry {key}, never written"))?;
                stack.push(v.clone());
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(tuple(items)?);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("a TUPLE opcode pops an empty stack".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(tuple(items)?);
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last() {
                    Some(Val::List(l)) => {
                        nest_into(l, &[&v])?;
                        l.items.borrow_mut().push(v);
                    }
                    _ => return Err("APPEND to something that is not a list".into()),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last() {
                    Some(Val::List(l)) => {
                        nest_into(l, &items.iter().collect::<Vec<_>>())?;
                        l.items.borrow_mut().extend(items);
                    }
                    _ => return Err("APPENDS to something that is not a list".into()),
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    vec![k, v]
                } else {
                    pop_mark(&mut stack)?
                };
                if items.len() % 2 != 0 {
                    return Err("SETITEMS with an odd number of items".into());
                }
                match stack.last() {
                    Some(Val::Dict(d)) => {
                        nest_into(d, &items.iter().collect::<Vec<_>>())?;
                        let mut d = d.items.borrow_mut();
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return Err("SETITEM on something that is not a dict".into()),
                }
            }
            b'Q' => {
                let id = pop(&mut stack)?;
                let Val::Tuple(t, _) = &id else {
                    return Err("a persistent id that is not a tuple".into());
                };
                match t.as_slice() {
                    [Val::Str(kind), Val::Global(Global::Storage(dtype)), Val::Str(key), _location, _numel]
                        if &**kind == "storage" =>
                    {
                        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                            return Err(format!("storage key {key:?} is not a plain name"));
                        }
                        stack.push(Val::Storage {
                            dtype,
                            key: key.clone(),
                        });
                    }
                    _ => return Err("a persistent id that is not a torch storage reference".into()),
                }
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                let built = match callable {
                    Val::Global(Global::OrderedDict) => Val::Dict(Rc::default()),
                    Val::Global(Global::RebuildTensor) => rebuild_tensor(&args)?,
                    Val::Global(Global::RebuildParameter) => match &args {
                        Val::Tuple(a, _) if matches!(a.first(), Some(Val::Tensor(_))) => a[0].clone(),
                        _ => return Err("_rebuild_parameter is not given a tensor".into()),
                    },
                    other => {
                        return Err(format!(
                            "REDUCE of {}, which is not an allowed global",
                            describe(&other)
                        ))
                    }
                };
                stack.push(built);
            }
            b'b' => {
                // BUILD sets an object's state; on a dict (an OrderedDict's `_metadata`) it is dropped.
                let state = pop(&mut stack)?;
                match stack.last() {
                    Some(Val::Dict(d)) => nest_into(d, &[&state])?,
                    _ => return Err("BUILD on something that is not a dict".into()),
                }
            }
            b'.' => break,
            other => {
                return Err(format!(
                    "opcode {other:#04x} ({}) at byte {at} is not one a file of tensors needs; vibecheck does not \
                     execute pickles",
                    opcode_name(other)
                ))
            }
        }
    }
    let root = stack.pop().ok_or("the pickle leaves nothing")?;
    let Val::Dict(entries) = root else {
        return Err(format!(
            "the pickle holds {}, not a dict of tensors (a state dict)",
            describe(&root)
        ));
    };
    let entries = entries.items.borrow();
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries.iter() {
        let Val::Str(name) = k else {
            return Err(format!("a state dict key is {}, not a name", describe(k)));
        };
        let Val::Tensor(t) = v else {
            return Err(format!("{name:?} holds {}, not a tensor", describe(v)));
        };
        let (dtype, shape, storage, offset) = &**t;
        out.push(PickledTensor {
            name: name.to_string(),
            dtype,
            shape: shape.clone(),
            storage: storage.to_string(),
            offset: *offset,
        });
    }
    Ok(out)
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'i' => "INST: builds an instance of a class",
        b'o' => "OBJ: builds an instance of a class",
        0x81 | 0x92 => "NEWOBJ: builds an instance of a class",
        b'c' => "GLOBAL",
        b'S' | b'T' | b'U' => "a Python 2 string",
        b'I' | b'L' | b'F' => "a text number",
        b'B' | b'C' | 0x8e | 0x96 => "bytes",
        b'p' | b'g' => "a text memo",
        b'0' | b'1' | b'2' => "a stack manipulation",
        0x82..=0x84 => "an extension registry lookup",
        0x8f..=0x91 => "a set",
        0x97 | 0x98 => "an out-of-band buffer",
        _ => "unknown",
    }
}

/// Whether `path` is a zip file (torch's format since 1.6) rather than the legacy one.
fn is_zip(path: &Path) -> Result<bool, CheckpointError> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let n = f
        .read(&mut magic)
        .map_err(|e| CheckpointError::io(path, e))?;
    Ok(n == 4 && &magic == b"PK\x03\x04")
}

/// Reads a `torch.save` file's tensor table: each tensor's dtype, shape and absolute byte range in the file,
/// every range checked against its storage entry. Refusals name the file and say how to convert it.
pub fn read(path: &Path) -> Result<Header, CheckpointError> {
    let bad = |m: String| CheckpointError::invalid(path, m);
    if !is_zip(path)? {
        return Err(bad(format!(
            "is in torch's legacy (pre-1.6) format, which vibecheck does not read; {CONVERT_HINT}"
        )));
    }
    let file = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| CheckpointError::io(path, e))?
        .len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        bad(format!(
            "not a readable zip file (a damaged torch checkpoint?): {e}"
        ))
    })?;
    // Every entry's uncompressed byte range, by name.
    let mut ranges: HashMap<String, (u64, u64)> = HashMap::new();
    let mut pickle_name = None;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| bad(format!("zip entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| bad(format!("zip entry {i} has an unreadable name: {e}")))?
            .to_string();
        if name.ends_with("/data.pkl") || name == "data.pkl" {
            pickle_name = Some(name.clone());
        }
        if entry.compression() == zip::CompressionMethod::Stored {
            if let Some(start) = entry.data_start() {
                ranges.insert(name, (start, entry.size()));
            }
        }
    }
    let pickle_name = pickle_name
        .ok_or_else(|| bad("is a zip file without data.pkl: not a torch.save checkpoint".into()))?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let byteorder = format!("{prefix}byteorder");
    if let Ok(mut e) = zip.by_name(&byteorder) {
        let mut s = String::new();
        e.by_ref()
            .take(16)
            .read_to_string(&mut s)
            .map_err(|e| bad(format!("{byteorder}: {e}")))?;
        if s.trim() != "little" {
            return Err(bad(format!(
                "stores its tensors {:?}-endian; only little-endian checkpoints are read",
                s.trim()
            )));
        }
    }
    let pickle = {
        let e = zip
            .by_name(&pickle_name)
            .map_err(|e| bad(format!("{pickle_name}: {e}")))?;
        if e.size() > MAX_PICKLE_BYTES {
            return Err(bad(format!(
                "{pickle_name} is {} bytes, more than a state dict's pickle holds",
                e.size()
            )));
        }
        let mut bytes = Vec::new();
        e.take(MAX_PICKLE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{pickle_name}: {e}")))?;
        bytes
    };
    let pickled = parse_pickle(&pickle).map_err(|m| bad(format!("{m}; {CONVERT_HINT}")))?;
    let mut tensors = Vec::with_capacity(pickled.len());
    for t in pickled {
        let entry = format!("{prefix}data/{}", t.storage);
        let &(start, size) = ranges.get(&entry).ok_or_else(|| {
            bad(format!(
                "tensor {:?}: its storage {entry:?} is missing or compressed",
                t.name
            ))
        })?;
        let elem = crate::safetensors_header::dtype_size(t.dtype).unwrap_or(1);
        let count = t
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let range = count
            .and_then(|c| c.checked_mul(elem))
            .zip((t.offset as u64).checked_mul(elem))
            .and_then(|(len, off)| Some((off, off.checked_add(len)?)));
        let Some((begin, end)) = range.filter(|(_, end)| *end <= size) else {
            return Err(bad(format!(
                "tensor {:?} ({:?}, shape {:?}) needs more bytes than its storage holds ({size})",
                t.name, t.dtype, t.shape
            )));
        };
        let (begin, end) = (start + begin, start + end);
        if end > file_len {
            return Err(bad(format!(
                "tensor {:?} lies past the end of the file",
                t.name
            )));
        }
        tensors.push(TensorEntry {
            name: t.name,
            dtype: t.dtype.to_string(),
            shape: t.shape,
            begin,
            end,
        });
    }
    Ok(Header {
        tensors,
        metadata: Default::default(),
        file_len,
        data_start: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_running_globals_and_opcodes_are_refused_by_name() {
        let evil = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.";
        let e = parse_pickle(evil).unwrap_err();
        assert!(
            e.contains("posix.system") && e.contains("does not execute"),
            "{e}"
        );
        let inst = b"\x80\x02(i__main__\nEvil\n.";
        let e = parse_pickle(inst).unwrap_err();
        assert!(e.contains("INST"), "{e}");
    }

    /// Found by the torch_pickle fuzz target: a list appended into itself (through the memo) made a cycle that
    /// formatting the error recursed through until the stack overflowed.
    #[test]
    fn regression_self_containing_and_deep_containers_are_refused() {
        // EMPTY_LIST, BINPUT 0, BINGET 0, APPEND: the list into itself.
        let cycle = b"\x80\x02]q\x00h\x00a.";
        let e = parse_pickle(cycle).unwrap_err();
        assert!(e.contains("nesting it in another"), "{e}");
        // 10 000 nested lists: refused at depth 32, not a recursion 10 000 deep.
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 10_000));
        deep.extend(std::iter::repeat_n(b'a', 9_999));
        deep.push(b'.');
        let e = parse_pickle(&deep).unwrap_err();
        assert!(e.contains("deep"), "{e}");
        let crash = include_bytes!("../../../fuzz/regressions/torch_pickle-stack-overflow.bin");
        assert!(parse_pickle(crash).is_err());
    }

    #[test]
    fn hostile_lengths_and_memo_keys_are_errors_not_allocations() {
        // A string claiming 4 GB, a memo read never written, a LONG_BINPUT far out: each an error.
        for bad in [
            &b"\x80\x02X\xff\xff\xff\xff"[..],
            &b"\x80\x02j\xff\xff\xff\x7f."[..],
            &b"\x80\x02}r\xff\xff\xff\xff."[..],
        ] {
            assert!(parse_pickle(bad).is_err() || parse_pickle(bad).unwrap().is_empty());
        }
    }
}
