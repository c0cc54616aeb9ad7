//! Rendering a model's own Jinja chat template the way `transformers`' `apply_chat_template` does:
//! `trim_blocks` and `lstrip_blocks` on, Python string/dict methods (`.strip()`, `.items()`, ...)
//! through `minijinja-contrib`'s pycompat, `raise_exception(msg)`, `strftime_now(fmt)`, and a
//! `tojson` filter that writes what Python's `json.dumps(..., ensure_ascii=False)` writes (no HTML
//! escaping, `", "` and `": "` separators). `{% generation %}` blocks render their body.

use minijinja::value::ValueKind;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

use crate::error::DataError;

/// A compiled chat template.
pub struct JinjaTemplate {
    env: Environment<'static>,
    /// The template's source (hashed into the cache key).
    pub source: String,
}

/// The variables a render sees besides `messages`.
#[derive(Debug, Clone, Default)]
pub struct RenderVars {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
}

const NAME: &str = "chat_template";

/// The work one render may do, in minijinja fuel: about one unit per instruction and per 64 bytes
/// of data created (so at most ~64 MiB of strings). A real chat template spends a few hundred
/// units per message plus the message text; a 100-message conversation of 1 MiB costs under
/// 100 000. One million leaves ten times that and stops a hostile template (nested
/// `range(100000)` loops) within a fraction of a second.
pub const FUEL: u64 = 1_000_000;
/// The longest rendered conversation: 16 MiB of text is millions of tokens, far beyond any
/// `cutoff_len`; a template that writes more is broken or hostile.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// The largest `tojson(indent=...)`: our `tojson` is not metered by the fuel, and its output grows
/// with indent × depth.
const MAX_JSON_INDENT: usize = 16;

impl JinjaTemplate {
    /// Compiles `source`; a syntax error names the template's line.
    pub fn compile(source: &str) -> Result<Self, DataError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| DataError::template("auto", e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> Result<Value, Error> {
            Ok(Value::from(super::strftime::strftime_now(&fmt)))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, rewrite_generation_tags(source))
            .map_err(|e| DataError::template("auto", describe(&e)))?;
        Ok(JinjaTemplate {
            env,
            source: source.to_string(),
        })
    }

    /// Renders `messages`, given as `(role, content)` pairs and seen by the template as a list of
    /// `{role, content}` maps (in that key order, as Python builds them).
    pub fn render(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
        vars: &RenderVars,
    ) -> Result<String, DataError> {
        let messages: Value = messages
            .iter()
            .map(|(role, content)| {
                Value::from_pairs([
                    ("role", Value::from(*role)),
                    ("content", Value::from(*content)),
                ])
            })
            .collect();
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| DataError::template("auto", describe(&e)))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => vars.bos_token.clone(),
            eos_token => vars.eos_token.clone(),
            unk_token => vars.unk_token.clone(),
            pad_token => vars.pad_token.clone(),
            tools => Value::from(()),
            documents => Value::from(()),
        };
        let mut out = CappedOutput::default();
        match tmpl.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.bytes)
                .map_err(|_| DataError::template("auto", "the rendered text is not UTF-8")),
            Err(_) if out.overflowed => Err(DataError::template(
                "auto",
                format!(
                    "the rendered conversation exceeds {} MiB; the template is broken or hostile",
                    MAX_OUTPUT_BYTES >> 20
                ),
            )),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(DataError::template(
                "auto",
                format!("rendering one conversation took more than {FUEL} steps (minijinja fuel); the template loops too long or builds too much"),
            )),
            Err(e) => Err(DataError::template("auto", describe(&e))),
        }
    }
}

/// Render output that refuses to grow past [`MAX_OUTPUT_BYTES`].
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("chat template output too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An error with its template line, when minijinja knows it.
fn describe(e: &Error) -> String {
    match e.line() {
        Some(line) => format!("{e} (template line {line})"),
        None => e.to_string(),
    }
}

/// `{% generation %}` / `{% endgeneration %}` (HF's assistant-mask markers) become a block that
/// always renders, keeping any whitespace-control markers.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // The closing `%}` is searched after the opening `{%`: in `{%}` they overlap.
        let Some(end) = tag[2..].find("%}").map(|e| e + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let trimmed = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let lead = &inner[..inner.len() - inner.trim_start_matches(['-', '+']).len()];
        let tail = &inner[inner.trim_end_matches(['-', '+']).len()..];
        match trimmed {
            "generation" => out.push_str(&format!("{{%{lead} if true {tail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {tail}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    if indent.is_some_and(|n| n > MAX_JSON_INDENT) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent is at most {MAX_JSON_INDENT}"),
        ));
    }
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let mut out = String::new();
    let style = PyJson {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    style.write(value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// Python `json.dumps` layout.
struct PyJson {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl PyJson {
    fn write(&self, v: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&v.to_string()),
            ValueKind::String => py_string(v.as_str().unwrap_or_default(), out),
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    self.separator(i, depth + 1, out);
                    py_string(&k.to_string(), out);
                    out.push_str(&self.key_sep);
                    self.write(&v.get_item(k)?, depth + 1, out)?;
                }
                self.newline(depth, out);
                out.push('}');
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.separator(i, depth + 1, out);
                    self.write(item, depth + 1, out)?;
                }
                self.newline(depth, out);
                out.push(']');
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialise a {} value", v.kind()),
                ))
            }
        }
        Ok(())
    }

    fn separator(&self, i: usize, depth: usize, out: &mut String) {
        if i > 0 {
            out.push_str(&self.item_sep);
        }
        self.newline(depth, out);
    }

    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    }
}

/// A JSON string as Python writes it with `ensure_ascii=False`.
fn py_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_render_their_body() {
        let t = JinjaTemplate::compile("{% for m in messages %}{%- generation -%}[{{ m.content.strip() }}]{%- endgeneration -%}{% endfor %}").unwrap();
        let msgs = [("user", " a "), ("assistant", "b")];
        assert_eq!(
            t.render(&msgs, false, &RenderVars::default()).unwrap(),
            "[a][b]"
        );
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t =
            JinjaTemplate::compile("{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}")
                .unwrap();
        let msgs = [("user", "<é>\n\"q\"")];
        let out = t.render(&msgs, false, &RenderVars::default()).unwrap();
        assert_eq!(out, "[{\"role\": \"user\", \"content\": \"<é>\\n\\\"q\\\"\"}]|{\n  \"role\": \"user\",\n  \"content\": \"<é>\\n\\\"q\\\"\"\n}");
    }

    #[test]
    fn raise_exception_is_a_template_error() {
        let t = JinjaTemplate::compile("{{ raise_exception('roles must alternate') }}").unwrap();
        let err = t
            .render(&[], false, &RenderVars::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }
}
