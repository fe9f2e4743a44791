//! Between JS and Rust: errors become JS `Error`s named by their kind; the JS arguments (texts,
//! messages, option objects, arrays of examples) are checked into the library's types; results
//! go back as plain JS objects; the caller's callbacks are called.

use js_sys::{Array, JsString, Object, Reflect};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::prelude::*;

use crate::error::{Error, ErrorKind};
use crate::text::chat_template::Message;

/// A JS `Error` with `message` whose `name` is `kind`'s (`"BackendError"`, ...): callers branch
/// on the name (the worker's CPU fallback does), never on the text. `JsError` cannot set it.
pub(crate) fn named_error(kind: ErrorKind, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name(kind.name());
    e.into()
}

/// `e` as a JS `Error`: its message, named by its kind.
pub(crate) fn js_error(e: Error) -> JsValue {
    named_error(e.kind(), &e.to_string())
}

/// An `InvalidInputError` for an argument the wasm layer refuses itself.
pub(crate) fn invalid_input(message: impl AsRef<str>) -> JsValue {
    named_error(ErrorKind::InvalidInput, message.as_ref())
}

/// A plain JS `Error` for what only a bug causes (a result that cannot be built).
pub(crate) fn internal(message: impl AsRef<str>) -> JsValue {
    js_sys::Error::new(message.as_ref()).into()
}

/// Library results as results wasm-bindgen throws: `.js()?` in every exported function.
pub(crate) trait JsResult<T> {
    /// The error as a named JS `Error` ([`js_error`]).
    fn js(self) -> Result<T, JsValue>;
    /// The same, with `context` before the message; the kind stays the error's own.
    fn js_context(self, context: &str) -> Result<T, JsValue>;
}

impl<T, E: Into<Error>> JsResult<T> for Result<T, E> {
    fn js(self) -> Result<T, JsValue> {
        self.map_err(|e| js_error(e.into()))
    }

    fn js_context(self, context: &str) -> Result<T, JsValue> {
        self.map_err(|e| {
            let e: Error = e.into();
            named_error(e.kind(), &format!("{context}: {e}"))
        })
    }
}

/// `value` as a string, or an `InvalidInputError` naming `what` and what was passed instead
/// (an argument typed `String` in wasm-bindgen's glue fails on a non-string in JS code the
/// caller did not write, with no such message).
pub(crate) fn string(value: &JsValue, what: &str) -> Result<String, JsValue> {
    value.as_string().ok_or_else(|| {
        invalid_input(format!(
            "{what} must be a string, not {}",
            value.js_typeof().as_string().unwrap_or_default()
        ))
    })
}

/// `value` as a number, or an `InvalidInputError` naming `what` (wasm-bindgen would turn
/// anything else into NaN, or throw for a BigInt or a Symbol).
pub(crate) fn number(value: &JsValue, what: &str) -> Result<f64, JsValue> {
    value.as_f64().ok_or_else(|| {
        invalid_input(format!(
            "{what} must be a number, not {}",
            value.js_typeof().as_string().unwrap_or_default()
        ))
    })
}

/// A `RefCell` borrow, or an error saying another call is using the models.
pub(crate) fn busy<T>(r: Result<T, impl std::fmt::Debug>) -> Result<T, JsValue> {
    r.map_err(|_| invalid_input("the models are busy with another call; wait for it to finish"))
}

/// `value` as a plain JS object (maps as objects, not `Map`s).
pub(crate) fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    value
        .serialize(&serializer)
        .map_err(|e| internal(e.to_string()))
}

/// Strings from a JS array, refusing anything else and text that is not valid UTF-16 (a lone
/// surrogate would otherwise be silently replaced and scored as something else).
pub(crate) fn texts(texts: &JsValue) -> Result<Vec<String>, JsValue> {
    let array: &Array = texts
        .dyn_ref()
        .ok_or_else(|| invalid_input("classify expects an array of strings"))?;
    array
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let s: &JsString = v.dyn_ref().ok_or_else(|| {
                invalid_input(format!(
                    "text {i} is not a string (got {})",
                    v.js_typeof().as_string().unwrap_or_default()
                ))
            })?;
            if !s.is_valid_utf16() {
                return Err(invalid_input(format!(
                    "text {i} is not valid UTF-16 (it holds a lone surrogate)"
                )));
            }
            Ok(String::from(s))
        })
        .collect()
}

/// Token ids from JS: a `Uint32Array`, or an array of integers from 0 to 2^32 - 1.
/// wasm-bindgen's `Vec<u32>` glue would take any array-like instead (a string became that
/// many zeros) and wrap numbers out of range.
pub(crate) fn token_ids(value: JsValue) -> Result<Vec<u32>, JsValue> {
    if let Some(typed) = value.dyn_ref::<js_sys::Uint32Array>() {
        return Ok(typed.to_vec());
    }
    if !Array::is_array(&value) {
        return Err(invalid_input(format!(
            "ids must be a Uint32Array or an array of token ids, not {}",
            value.js_typeof().as_string().unwrap_or_default()
        )));
    }
    serde_wasm_bindgen::from_value(value).map_err(|e| {
        let e = e.to_string();
        invalid_input(format!("ids: {}", e.trim_start_matches("Error: ")))
    })
}

/// Chat messages from JS (`[{ role, content }]`).
pub(crate) fn messages(messages: JsValue) -> Result<Vec<Message>, JsValue> {
    array_of(messages, "messages", "{ role, content }")
}

/// A JS array of objects shaped like `shape`, as `T`s; `what` names the argument in errors.
pub(crate) fn array_of<T: DeserializeOwned>(
    value: JsValue,
    what: &str,
    shape: &str,
) -> Result<Vec<T>, JsValue> {
    if !Array::is_array(&value) {
        return Err(invalid_input(format!(
            "{what} must be an array of {shape} objects"
        )));
    }
    serde_wasm_bindgen::from_value(value).map_err(|e| invalid_input(format!("{what}: {e}")))
}

/// One of the library's option types from a JS object. The names are the type's serde names
/// and every absent field keeps `T::default()`'s value, so names and defaults live in the Rust
/// type alone. `undefined` or `null`, for the object or one field, means "not given".
///
/// The object is built from the serialised defaults with the caller's non-null fields on top,
/// then deserialised: serde-wasm-bindgen reads only the fields a struct declares (a misspelt
/// option would pass silently, so names are checked here first), a `null` field would be an
/// error for a number, and a flattened field would take its own type's defaults.
pub(crate) fn options<T: Serialize + DeserializeOwned + Default>(
    value: &JsValue,
    what: &str,
) -> Result<T, JsValue> {
    if value.is_undefined() || value.is_null() {
        return Ok(T::default());
    }
    let given: &Object = value
        .dyn_ref()
        .ok_or_else(|| invalid_input(format!("{what} must be an object")))?;
    let merged: Object = to_js(&T::default())?.unchecked_into();
    let known: Vec<String> = Object::keys(&merged)
        .iter()
        .filter_map(|k| k.as_string())
        .collect();
    for entry in Object::entries(given).iter() {
        let entry: Array = entry.unchecked_into();
        let (key, v) = (entry.get(0), entry.get(1));
        let name = key.as_string().unwrap_or_default();
        if !known.contains(&name) {
            return Err(invalid_input(format!(
                "{what}: unknown option {name:?} (known: {})",
                known.join(", ")
            )));
        }
        if !(v.is_undefined() || v.is_null()) {
            Reflect::set(&merged, &key, &v).map_err(|_| internal("could not read the options"))?;
        }
    }
    serde_wasm_bindgen::from_value(merged.into()).map_err(|e| invalid_input(format!("{what}: {e}")))
}

/// Hands `piece` to the caller's `onToken`; `false` stops generating. A callback that throws
/// stops it too (its error is not lost: the console shows it).
pub(crate) fn call_on_token(on_token: Option<&js_sys::Function>, piece: &str) -> bool {
    match on_token {
        Some(f) => match f.call1(&JsValue::NULL, &JsValue::from_str(piece)) {
            Ok(r) => r.as_bool() != Some(false),
            Err(e) => {
                web_sys::console::error_2(&"webguard: onToken threw; stopping".into(), &e);
                false
            }
        },
        None => true,
    }
}

/// Whether the caller's `shouldStop()` returns something truthy.
pub(crate) fn asks_to_stop(should_stop: Option<&js_sys::Function>) -> bool {
    should_stop
        .and_then(|f| f.call0(&JsValue::NULL).ok())
        .is_some_and(|r| r.is_truthy())
}

#[cfg(feature = "tune")]
/// Hands a tuning step to `onStep` (which may return `false` to cancel) and asks `shouldStop`.
pub(crate) fn step_callback(
    on_step: Option<&js_sys::Function>,
    should_stop: Option<&js_sys::Function>,
    step: &crate::tune::Step,
) -> bool {
    let go_on = match on_step {
        Some(cb) => to_js(step)
            .and_then(|s| cb.call1(&JsValue::NULL, &s))
            .map(|r| r.as_bool() != Some(false))
            .unwrap_or(false),
        None => true,
    };
    go_on && !asks_to_stop(should_stop)
}
