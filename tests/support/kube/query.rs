//! Request paths, selectors and merge patches: the pure part of the fake API server.

use super::*;

/// A request path: collection, namespace (`None`: all namespaces) and name.
pub(super) struct Target {
    pub(super) coll: String,
    pub(super) ns: Option<String>,
    pub(super) name: Option<String>,
}

/// Parses `/apis/<g>/<v>/[namespaces/<ns>/]<plural>[/<name>]` and `/api/v1/...`.
pub(super) fn parse(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match *segs.first()? {
        "apis" if segs.len() >= 4 => (format!("{}/{}", segs[1], segs[2]), &segs[3..]),
        "api" if segs.len() >= 3 => ("v1".to_string(), &segs[2..]),
        _ => return None,
    };
    let t = |plural: &str, ns: Option<&str>, name: Option<&str>| Target {
        coll: format!("{gv}/{plural}"),
        ns: ns.map(str::to_string),
        name: name.map(str::to_string),
    };
    match rest {
        ["namespaces", ns, plural] => Some(t(plural, Some(ns), None)),
        ["namespaces", ns, plural, name] => Some(t(plural, Some(ns), Some(name))),
        [plural] => Some(t(plural, None, None)),
        // A cluster-scoped object (CSIDriver, CSINode): stored under the namespace "".
        [plural, name] => Some(t(plural, Some(""), Some(name))),
        _ => None,
    }
}

/// `a.b.c` in a JSON object, as a string (`""` when absent).
pub(super) fn field(obj: &Value, path: &str) -> String {
    let mut v = obj;
    for part in path.split('.') {
        v = &v[part];
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Whether `obj` matches the `labelSelector` and `fieldSelector` of the query.
pub(super) fn selected(obj: &Value, query: &HashMap<String, String>) -> bool {
    let labels = &obj["metadata"]["labels"];
    let label_ok = query.get("labelSelector").is_none_or(|sel| {
        sel.split(',').filter(|t| !t.is_empty()).all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once('=') {
                labels[k.trim().trim_end_matches('=')].as_str() == Some(v.trim().trim_start_matches('='))
            } else if let Some(k) = term.strip_prefix('!') {
                labels[k.trim()].is_null()
            } else {
                !labels[term.trim()].is_null()
            }
        })
    });
    let field_ok = query.get("fieldSelector").is_none_or(|sel| {
        sel.split(',').filter(|t| !t.is_empty()).all(|term| match term.split_once("!=") {
            Some((k, v)) => field(obj, k.trim()) != v.trim(),
            None => term
                .split_once('=')
                .is_some_and(|(k, v)| field(obj, k.trim().trim_end_matches('=')) == v.trim().trim_start_matches('=')),
        })
    });
    label_ok && field_ok
}

/// RFC 7386 JSON merge patch.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// (`.group` or "", plural) of a collection key, for messages.
pub(super) fn names(coll: &str) -> (String, String) {
    let plural = coll.rsplit('/').next().unwrap_or("").to_string();
    let group =
        if coll.starts_with("v1/") { String::new() } else { format!(".{}", coll.split('/').next().unwrap_or("")) };
    (group, plural)
}
