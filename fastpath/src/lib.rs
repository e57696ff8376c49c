//! `auction._fastpath`: the compiled steps of the worker's per-event path (auction/fastpath.py).
//! `Intake`: raw intent bytes in, `AuctionRequest`s and the few intent fields the records repeat
//! out, with no parsed dict in between. `Writer`: an auction's compact outcome in, its records'
//! bytes out, with no dict per record. `Engine` (src/engine_py.rs): the auction engine over its own
//! copy of the campaign index. Each answers `None` where the Python reference must do the work
//! (src/intent.rs, src/records.rs and src/engine.rs say when).

mod engine;
mod engine_py;
mod intent;
mod json;
mod records;

use intent::{read, Intent, Rules};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFrozenSet, PyList, PyString, PyTuple};

#[pyclass(frozen)]
struct Writer {
    label_json: Vec<u8>, // the ads' label, already a JSON string: quoted once, not per auction
}

#[pymethods]
impl Writer {
    #[new]
    fn new(label: &str) -> Self {
        Writer {
            label_json: {
                let mut quoted = Vec::with_capacity(label.len() + 2);
                json::push_str(&mut quoted, label);
                quoted
            },
        }
    }

    /// `(encoded, impression_ids, no_fill_reason, compact)` of one auction, or `None`.
    /// Arguments of other types than the reference's (a dict, a list, a frozenset) give `None`.
    fn write<'py>(
        &self,
        py: Python<'py>,
        fields: &Bound<'py, PyAny>,
        outcome: &Bound<'py, PyAny>,
        keywords: &Bound<'py, PyAny>,
    ) -> Option<Bound<'py, PyTuple>> {
        let fields = fields.downcast_exact::<PyDict>().ok()?;
        let outcome = outcome.downcast_exact::<PyList>().ok()?;
        let keywords = keywords.downcast_exact::<PyFrozenSet>().ok()?;
        records::write(py, &self.label_json, fields, outcome, keywords)
    }
}
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

#[pyclass(frozen)]
struct Intake {
    rules: Rules,
    request_type: Py<PyAny>,
}

#[pymethods]
impl Intake {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        categories: HashSet<String>,
        age_brackets: Vec<String>,
        short_max: usize,
        int_max: i64,
        max_slots: i64,
        keywords_max: usize,
        keyword_max: usize,
        record_max_bytes: usize,
        request_type: Py<PyAny>,
    ) -> Self {
        let rules = Rules {
            categories,
            age_brackets,
            short_max,
            int_max,
            max_slots,
            keywords_max,
            keyword_max,
            record_max_bytes,
        };
        Intake { rules, request_type }
    }

    /// For each value: `(request, fields)` or `None` (take the Python path). `fields` holds what
    /// the records copy from the intent: event_id, user_id, session_id, placement, ts and
    /// intent.category.
    fn requests<'py>(&self, py: Python<'py>, values: &Bound<'py, PyList>, now_ms: i64) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let request_type = self.request_type.bind(py);
        for value in values.iter() {
            match self.read_one(&value) {
                Some(intent) => out.append(request_and_fields(py, request_type, &intent, now_ms)?)?,
                None => out.append(py.None())?,
            }
        }
        Ok(out)
    }

    /// For each value: the intent kept in Rust (`Parsed`: the compiled engine's `claim_parsed`
    /// reads it with no Python object in between) or `None` (take the Python path).
    fn parse<'py>(&self, py: Python<'py>, values: &Bound<'py, PyList>, now_ms: i64) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for value in values.iter() {
            match self.read_one(&value) {
                Some(intent) => out.append(Bound::new(
                    py,
                    Parsed {
                        intent,
                        now_ms,
                        request_type: self.request_type.clone_ref(py),
                    },
                )?)?,
                None => out.append(py.None())?,
            }
        }
        Ok(out)
    }
}

impl Intake {
    fn read_one(&self, value: &Bound<'_, PyAny>) -> Option<Intent> {
        match value.downcast::<PyBytes>() {
            Ok(bytes) => read(bytes.as_bytes(), &self.rules),
            Err(_) => None, // a null value (tombstone) or not bytes: Python names it
        }
    }
}

/// One intent the compiled intake read, kept in Rust until the claim. Its `AuctionRequest` and
/// fields are made only where Python needs them (`expand`: the Python engine, a replay, a DLQ
/// record), equal to what `Intake.requests` makes.
#[pyclass(frozen)]
pub struct Parsed {
    pub intent: Intent,
    pub now_ms: i64,
    request_type: Py<PyAny>,
}

#[pymethods]
impl Parsed {
    #[getter]
    fn event_id(&self) -> &str {
        &self.intent.event_id
    }

    #[getter]
    fn user_id(&self) -> &str {
        &self.intent.user_id
    }

    /// `(request, fields)`, as `Intake.requests` gives them.
    fn expand<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        request_and_fields(py, self.request_type.bind(py), &self.intent, self.now_ms)
    }
}

fn request_and_fields<'py>(
    py: Python<'py>,
    request_type: &Bound<'py, PyAny>,
    intent: &Intent,
    now_ms: i64,
) -> PyResult<Bound<'py, PyTuple>> {
    let event_id = PyString::new(py, &intent.event_id);
    let user_id = PyString::new(py, &intent.user_id);
    // Interned (shared, and kept for the process's life on newer Pythons): only the values the
    // schema bounds (IAB categories, age brackets); a producer's free text is not.
    let placement = PyString::new(py, &intent.placement);
    let category = PyString::intern(py, &intent.category);
    let keywords = PyFrozenSet::new(py, intent.keywords.iter().map(|keyword| PyString::new(py, keyword)))?;
    let labels = PyFrozenSet::new(py, intent.safety_labels.iter().map(|label| PyString::new(py, label)))?;
    let args = PyTuple::new(
        py,
        [
            event_id.clone().into_any(),
            user_id.clone().into_any(),
            placement.clone().into_any(),
            intent.slots.into_pyobject(py)?.into_any(),
            intent.floor_cpm_micros.into_pyobject(py)?.into_any(),
            category.clone().into_any(),
            keywords.into_any(),
            PyString::new(py, &intent.locale).into_any(),
            PyString::new(py, &intent.country).into_any(),
            PyString::new(py, &intent.device).into_any(),
            labels.into_any(),
            pyo3::types::PyBool::new(py, intent.consent_ads).to_owned().into_any(),
            pyo3::types::PyBool::new(py, intent.personalization)
                .to_owned()
                .into_any(),
            PyString::intern(py, &intent.age_bracket).into_any(),
            now_ms.into_pyobject(py)?.into_any(),
        ],
    )?;
    let request = request_type.call1(args)?;
    let body = PyDict::new(py);
    body.set_item(intern!(py, "category"), category)?;
    let fields = PyDict::new(py);
    fields.set_item(intern!(py, "event_id"), event_id)?;
    fields.set_item(intern!(py, "user_id"), user_id)?;
    fields.set_item(intern!(py, "session_id"), PyString::new(py, &intent.session_id))?;
    fields.set_item(intern!(py, "placement"), placement)?;
    fields.set_item(intern!(py, "ts"), intent.ts)?;
    fields.set_item(intern!(py, "intent"), body)?;
    PyTuple::new(py, [request, fields.into_any()])
}

/// The system allocator, counting the bytes this module holds: the bench reports what the
/// engine's copy of the index costs (Rust allocations are not seen by tracemalloc). A relaxed
/// atomic add per allocation.
struct Counting;

static HELD_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc(layout);
        if !pointer.is_null() {
            HELD_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc_zeroed(layout);
        if !pointer.is_null() {
            HELD_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        System.dealloc(pointer, layout);
        HELD_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = System.realloc(pointer, layout, new_size);
        if !moved.is_null() {
            HELD_BYTES.fetch_add(new_size, Ordering::Relaxed);
            HELD_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes the module's Rust code holds now.
#[pyfunction]
fn held_bytes() -> usize {
    HELD_BYTES.load(Ordering::Relaxed)
}

#[pymodule]
fn _fastpath(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(held_bytes, module)?)?;
    module.add_class::<Intake>()?;
    module.add_class::<Writer>()?;
    module.add_class::<Parsed>()?;
    module.add_class::<engine_py::PyEngine>()?;
    Ok(())
}
