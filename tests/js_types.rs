//! The TypeScript types in `pkg/guard.d.ts` against the Rust types the wasm module deserialises
//! them into: every option field Rust knows is declared, the d.ts declares no option Rust does
//! not know (except the documented JS-only callbacks and `signal`), every "(default ...)" it
//! states is the Rust `Default`'s value, and its `ErrorName` union is exactly the error kinds'
//! names. The last test breaks a copy of the d.ts on purpose to show the checks can fail.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use webguard::error::ErrorKind;
use webguard::generate::GenerateOptions;
use webguard::guard::ModeratedReply;
use webguard::tune::TuneOptions;
use webguard::tune::chat::ChatTuneOptions;
use webguard::tune::filter::ImportOptions;

/// Fields guard.js handles itself and never sends to the wasm module.
const JS_ONLY: [&str; 3] = ["onToken", "onStep", "signal"];

fn dts() -> String {
    let path = webguard::source_checkout().join("pkg/guard.d.ts");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One declared field: its name and its doc comment (empty without one).
#[derive(Debug, Clone)]
struct Field {
    name: String,
    doc: String,
}

/// The fields of `export interface {name}`, inherited ones first (an own declaration replaces
/// the parent's).
fn interface(dts: &str, name: &str) -> Result<Vec<Field>, String> {
    let head = format!("export interface {name} ");
    let start = dts
        .find(&head)
        .ok_or_else(|| format!("guard.d.ts has no interface {name}"))?
        + head.len();
    let open = start + dts[start..].find('{').ok_or("no body")?;
    let mut fields = match dts[start..open].trim().strip_prefix("extends ") {
        Some(parent) => interface(dts, parent.trim())?,
        None => Vec::new(),
    };
    for field in body_fields(&dts[open + 1..])? {
        match fields.iter_mut().find(|f| f.name == field.name) {
            Some(f) => *f = field,
            None => fields.push(field),
        }
    }
    Ok(fields)
}

/// The fields of an interface body (text after its `{`), up to its closing `}`.
fn body_fields(body: &str) -> Result<Vec<Field>, String> {
    let mut fields = Vec::new();
    let mut doc = String::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start();
        if rest.starts_with('}') {
            return Ok(fields);
        }
        if let Some(comment) = rest.strip_prefix("/**") {
            let end = comment.find("*/").ok_or("unclosed doc comment")?;
            doc = comment[..end].to_string();
            rest = &comment[end + 2..];
            continue;
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unexpected end of the interface")?;
        if name_len == 0 {
            return Err(format!(
                "cannot read a field at {:?}",
                &rest[..rest.len().min(40)]
            ));
        }
        let name = rest[..name_len].to_string();
        // The type runs to the first `;` outside brackets.
        let mut depth = 0i32;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '{' | '(' | '[' => depth += 1,
                    '}' | ')' | ']' => depth -= 1,
                    _ => {}
                }
                c == ';' && depth == 0
            })
            .map(|(i, _)| i)
            .ok_or_else(|| format!("field {name} has no `;`"))?;
        fields.push(Field {
            name,
            doc: std::mem::take(&mut doc),
        });
        rest = &rest[end + 1..];
    }
}

/// The value in a doc comment's "(default VALUE)", as JSON.
fn stated_default(doc: &str) -> Result<Option<Value>, String> {
    let Some(at) = doc.find("(default ") else {
        return Ok(None);
    };
    let text = &doc[at + "(default ".len()..];
    let end = text.find(')').ok_or("unclosed (default ...)")?;
    serde_json::from_str(&text[..end])
        .map(Some)
        .map_err(|e| format!("default {:?} is not JSON: {e}", &text[..end]))
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

/// What is wrong between the interface `name` in `dts` and `T`, whose field names and defaults
/// are those of `T::default()` serialised (what the wasm module accepts).
fn problems<T: Serialize + Default>(dts: &str, name: &str) -> Vec<String> {
    let fields = match interface(dts, name) {
        Ok(f) => f,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let Value::Object(rust) = serde_json::to_value(T::default()).unwrap() else {
        return vec![format!(
            "{name}: the Rust type does not serialise to an object"
        )];
    };
    let mut out = Vec::new();
    for key in rust.keys() {
        if !fields.iter().any(|f| &f.name == key) {
            out.push(format!("{name}: the Rust option `{key}` is not declared"));
        }
    }
    for f in &fields {
        if JS_ONLY.contains(&f.name.as_str()) {
            if !f.doc.contains("JS only") {
                out.push(format!("{name}: `{}` is not documented as JS only", f.name));
            }
            continue;
        }
        let Some(rust_default) = rust.get(&f.name) else {
            out.push(format!("{name}: `{}` is not a Rust option", f.name));
            continue;
        };
        match stated_default(&f.doc) {
            Ok(Some(v)) if !same_value(&v, rust_default) => out.push(format!(
                "{name}: `{}` is documented with default {v}, Rust's is {rust_default}",
                f.name
            )),
            Ok(_) => {}
            Err(e) => out.push(format!("{name}: `{}`: {e}", f.name)),
        }
    }
    out
}

/// Every check against `dts`.
fn all_problems(dts: &str) -> Vec<String> {
    let mut out = problems::<GenerateOptions>(dts, "ChatOptions");
    out.extend(problems::<TuneOptions>(dts, "TuneFilterOptions"));
    out.extend(problems::<ChatTuneOptions>(dts, "TuneChatOptions"));
    out.extend(problems::<ImportOptions>(dts, "ImportOptions"));
    out.extend(error_name_problems(dts));
    out
}

/// The `ErrorName` union against the kinds' names.
fn error_name_problems(dts: &str) -> Vec<String> {
    let Some(start) = dts.find("export type ErrorName =") else {
        return vec!["guard.d.ts has no `export type ErrorName`".into()];
    };
    let union = &dts[start..];
    let union = &union[..union.find(';').unwrap_or(union.len())];
    let declared: Vec<&str> = union.split('"').skip(1).step_by(2).collect();
    let names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
    let mut out = Vec::new();
    for n in &names {
        if !declared.contains(n) {
            out.push(format!("ErrorName lacks {n:?}"));
        }
        if !dts.contains(&format!("- \"{n}\":")) {
            out.push(format!("the ErrorName docs do not explain {n:?}"));
        }
    }
    for d in &declared {
        if !names.contains(d) {
            out.push(format!(
                "ErrorName declares {d:?}, which no error kind is named"
            ));
        }
    }
    out
}

#[test]
fn guard_d_ts_declares_the_rust_options_and_their_defaults() {
    let problems = all_problems(&dts());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The d.ts `Reply` against what a moderated turn serialises to (`ModeratedReply`): every field
/// the wasm module sends is declared (guard.js adds a few timings of its own).
fn reply_problems(dts: &str) -> Vec<String> {
    let fields = match interface(dts, "Reply") {
        Ok(f) => f,
        Err(e) => return vec![format!("Reply: {e}")],
    };
    // Every field serialises, `None`s included, so the default reply lists them all.
    let reply = ModeratedReply::default();
    let Value::Object(sent) = serde_json::to_value(reply).unwrap() else {
        return vec!["Reply: ModeratedReply does not serialise to an object".into()];
    };
    sent.keys()
        .filter(|k| !fields.iter().any(|f| &f.name == *k))
        .map(|k| format!("Reply: the reply field `{k}` is not declared"))
        .collect()
}

#[test]
fn the_reply_type_declares_every_field_rust_sends() {
    let problems = reply_problems(&dts());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let broken = dts().replacen("  chatJudge: number | null;\n", "", 1);
    assert_eq!(reply_problems(&broken).len(), 1);
}

#[test]
fn the_checks_fail_on_a_broken_d_ts() {
    let dts = dts();
    let broken = |from: &str, to: &str| {
        assert!(dts.contains(from), "the d.ts no longer contains {from:?}");
        all_problems(&dts.replacen(from, to, 1))
    };
    // A misspelt field: Rust's is undeclared and the d.ts has one Rust does not know.
    assert_eq!(broken("maxTokens?:", "maxTokenz?:").len(), 2);
    // A wrong default (tuneChat's 50 steps).
    let p = broken("(default 50)", "(default 40)");
    assert!(p.len() == 1 && p[0].contains("steps"), "{p:?}");
    // A field no Rust type has.
    let p = broken(
        "  batchSize?: number;",
        "  batchSize?: number;\n  warmup?: number;",
    );
    assert!(p.len() == 1 && p[0].contains("warmup"), "{p:?}");
    // A callback not documented as JS only (TuneChatOptions inherits it).
    let p = broken(
        "/** JS only: after each step; returning `false` cancels the run as `signal` does. */",
        "",
    );
    assert!(
        p.len() == 2 && p.iter().all(|p| p.contains("onStep")),
        "{p:?}"
    );
    // An error name that is not a kind's.
    assert_eq!(broken("| \"IoError\"", "| \"IOError\"").len(), 2);
}

/// Option types from JSON, as a native caller would use them: the serialised default reads
/// back as itself, and unknown names are errors.
fn round_trips<T: Serialize + DeserializeOwned + Default + PartialEq + std::fmt::Debug>() {
    let json = serde_json::to_value(T::default()).unwrap();
    assert_eq!(
        serde_json::from_value::<T>(json.clone()).unwrap(),
        T::default()
    );
    let mut unknown = json;
    unknown["noSuchOption"] = Value::from(1);
    let err = serde_json::from_value::<T>(unknown)
        .unwrap_err()
        .to_string();
    assert!(err.contains("noSuchOption"), "{err}");
}

#[test]
fn option_types_round_trip_and_refuse_unknown_names() {
    round_trips::<GenerateOptions>();
    round_trips::<TuneOptions>();
    round_trips::<ChatTuneOptions>();
    round_trips::<ImportOptions>();
    // Absent fields take the Default (the wasm module fills them in for ChatTuneOptions,
    // whose flattened TuneOptions would otherwise take its own).
    let empty = || Value::Object(Default::default());
    assert_eq!(
        serde_json::from_value::<GenerateOptions>(empty()).unwrap(),
        GenerateOptions::default()
    );
    assert_eq!(
        serde_json::from_value::<TuneOptions>(empty()).unwrap(),
        TuneOptions::default()
    );
    let o: GenerateOptions = serde_json::from_value(serde_json::json!({ "maxTokens": 7 })).unwrap();
    assert_eq!(o.max_new_tokens, 7);
}
