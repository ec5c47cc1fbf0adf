//! JSON schema → the TypeScript-like type text of harmony's `functions` namespace
//! (spec 7.3), matching the official renderer's output character for character, including
//! its quirks (nested objects close with 4 extra spaces, enum defaults unquoted, ...).

use super::json::JsonValue;
use super::types::Tool;

/// The `# Tools` section of the developer message for function tools.
pub(crate) fn tools_section(tools: &[Tool]) -> String {
    let mut ns = vec![
        "## functions\n".to_string(),
        "namespace functions {\n".to_string(),
    ];
    for tool in tools {
        let f = &tool.function;
        for line in f.description.as_deref().unwrap_or("").lines() {
            ns.push(format!("// {line}"));
        }
        match &f.parameters {
            Some(params) => ns.push(format!(
                "type {} = (_: {}) => any;\n",
                f.name,
                schema_to_ts(params, "")
            )),
            None => ns.push(format!("type {} = () => any;\n", f.name)),
        }
    }
    ns.push("} // namespace functions".to_string());
    ["# Tools".to_string(), ns.join("\n")].join("\n\n")
}

fn is_enum(schema: &JsonValue) -> bool {
    schema
        .get("enum")
        .and_then(JsonValue::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn str_field<'a>(v: &'a JsonValue, key: &str) -> Option<&'a str> {
    v.get(key).and_then(JsonValue::as_str)
}

fn nullable(v: &JsonValue) -> bool {
    v.get("nullable")
        .and_then(JsonValue::as_bool)
        .unwrap_or(false)
}

/// `T | null` for a nullable schema whose type text does not mention null yet.
fn with_null(schema: &JsonValue, ty: String) -> String {
    if nullable(schema) && !ty.contains("null") {
        format!("{ty} | null")
    } else {
        ty
    }
}

/// How a default value is written after `default: `. String defaults are quoted unless the
/// schema is an enum; `json_enum_strings` renders enum string defaults as JSON (top-level
/// oneOf variants do that in the reference renderer).
fn default_text(schema: &JsonValue, default: &JsonValue, json_enum_strings: bool) -> String {
    match default {
        JsonValue::String(s) if !is_enum(schema) => format!("\"{s}\""),
        JsonValue::String(s) if !json_enum_strings => s.clone(),
        other => other.to_string(),
    }
}

/// The type text of a JSON schema; `indent` prefixes the lines of object members.
pub(crate) fn schema_to_ts(schema: &JsonValue, indent: &str) -> String {
    if let Some(variants) = schema.get("oneOf").and_then(JsonValue::as_array) {
        return one_of_to_ts(variants, indent);
    }
    if let Some(types) = schema.get("type").and_then(JsonValue::as_array) {
        let names: Vec<&str> = types
            .iter()
            .filter_map(JsonValue::as_str)
            .map(|t| if t == "integer" { "number" } else { t })
            .collect();
        if !names.is_empty() {
            return names.join(" | ");
        }
    }
    match schema.get("type").and_then(JsonValue::as_str) {
        Some("object") => object_to_ts(schema, indent),
        Some("string") => {
            let values: Vec<String> = schema
                .get("enum")
                .and_then(JsonValue::as_array)
                .unwrap_or(&[])
                .iter()
                .filter_map(JsonValue::as_str)
                .map(|s| format!("\"{s}\""))
                .collect();
            if values.is_empty() {
                "string".to_string()
            } else {
                values.join(" | ")
            }
        }
        Some("number") | Some("integer") => "number".to_string(),
        Some("boolean") => "boolean".to_string(),
        Some("array") => match schema.get("items") {
            Some(items) => format!("{}[]", schema_to_ts(items, indent)),
            None => "Array<any>".to_string(),
        },
        _ => "any".to_string(),
    }
}

/// A schema that is itself a `oneOf`: one `\n<indent> | TYPE // comments` per variant.
fn one_of_to_ts(variants: &[JsonValue], indent: &str) -> String {
    let mut out = String::new();
    for variant in variants {
        out.push_str(&format!("\n{indent} | "));
        out.push_str(&with_null(
            variant,
            schema_to_ts(variant, &format!("{indent}   ")),
        ));
        let mut comments = Vec::new();
        if let Some(desc) = str_field(variant, "description") {
            comments.push(desc.to_string());
        }
        if let Some(default) = variant.get("default") {
            comments.push(format!("default: {}", default_text(variant, default, true)));
        }
        if !comments.is_empty() {
            out.push_str(&format!(" // {}", comments.join(" ")));
        }
    }
    out
}

fn object_to_ts(schema: &JsonValue, indent: &str) -> String {
    let mut out = String::new();
    if let Some(desc) = str_field(schema, "description") {
        out.push_str(&format!("{indent}// {desc}\n"));
    }
    out.push_str("{\n");
    let required: Vec<&str> = schema
        .get("required")
        .and_then(JsonValue::as_array)
        .unwrap_or(&[])
        .iter()
        .filter_map(JsonValue::as_str)
        .collect();
    let props = schema
        .get("properties")
        .and_then(JsonValue::as_object)
        .unwrap_or(&[]);
    for (key, prop) in props {
        let optional = if required.contains(&key.as_str()) {
            ""
        } else {
            "?"
        };
        if let Some(title) = str_field(prop, "title") {
            out.push_str(&format!("{indent}// {title}\n{indent}//\n"));
        }
        if prop.get("oneOf").is_none() {
            if let Some(desc) = str_field(prop, "description") {
                out.push_str(&format!("{indent}// {desc}\n"));
            }
        }
        if let Some(examples) = prop.get("examples").and_then(JsonValue::as_array) {
            if !examples.is_empty() {
                out.push_str(&format!("{indent}// Examples:\n"));
                for ex in examples.iter().filter_map(JsonValue::as_str) {
                    out.push_str(&format!("{indent}// - \"{ex}\"\n"));
                }
            }
        }
        if let Some(variants) = prop.get("oneOf").and_then(JsonValue::as_array) {
            out.push_str(&one_of_property(key, optional, prop, variants, indent));
            continue;
        }
        let ty = with_null(prop, schema_to_ts(prop, &format!("{indent}    ")));
        out.push_str(&format!("{indent}{key}{optional}: {ty},"));
        if prop.get("oneOf").is_none() {
            if let Some(default) = prop.get("default") {
                out.push_str(&format!(
                    " // default: {}",
                    default_text(prop, default, false)
                ));
            }
        }
        out.push('\n');
    }
    out.push_str(&format!("{indent}}}"));
    out
}

/// A property whose schema is a `oneOf`: comments, `name?:`, one ` | TYPE` line per variant,
/// then a line with `,`.
fn one_of_property(
    key: &str,
    optional: &str,
    prop: &JsonValue,
    variants: &[JsonValue],
    indent: &str,
) -> String {
    let mut out = String::new();
    let prop_desc = str_field(prop, "description");
    let first_variant_desc = variants.first().and_then(|v| str_field(v, "description"));
    let desc_above = prop_desc.is_some() && prop_desc != first_variant_desc;
    if desc_above {
        out.push_str(&format!("{indent}// {}\n", prop_desc.unwrap_or_default()));
    }
    if let Some(default) = prop.get("default") {
        out.push_str(&format!(
            "{indent}// default: {}\n",
            default_text(prop, default, false)
        ));
    }
    out.push_str(&format!("{indent}{key}{optional}:\n"));
    for (i, variant) in variants.iter().enumerate() {
        out.push_str(&format!("{indent} | "));
        out.push_str(&with_null(
            variant,
            schema_to_ts(variant, &format!("{indent}   ")),
        ));
        let mut comments = Vec::new();
        if !(i == 0 && desc_above) {
            if let Some(desc) = str_field(variant, "description") {
                if Some(desc) != prop_desc {
                    comments.push(desc.to_string());
                }
            }
        }
        if let Some(default) = variant.get("default") {
            comments.push(format!(
                "default: {}",
                default_text(variant, default, false)
            ));
        }
        if !comments.is_empty() {
            out.push_str(&format!(" // {}", comments.join(" ")));
        }
        out.push('\n');
    }
    out.push_str(&format!("{indent},\n"));
    out
}
