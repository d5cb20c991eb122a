//! An OCSF schema checker for the tests, read from the schema's own JSON files (never copied
//! into this repository): it compiles a class or object the way the schema defines it
//! (`extends` chains, `$include`d profiles, enums merged with the dictionary's) and checks an
//! event against it, listing every problem with its path.
//!
//! What a check enforces, recursively into every object emitted:
//! - every attribute the class, base_event, a claimed profile or an object marks `required` is
//!   present, and each `at_least_one` / `just_one` constraint holds (the most specific
//!   definition's constraints, as a child's replace its parent's);
//! - no attribute outside the class, its objects and its claimed profiles (`unmapped` is free);
//! - each value has its dictionary type (strings, integers in range, booleans, arrays, IPs);
//! - each enum value (every `*_id`, and string enums such as `http_method`) is one the schema
//!   defines, and a present sibling (`activity_name`, `status`, ...) is its caption;
//! - `class_uid`, `category_uid` and `type_uid` agree with the class file and its category;
//! - each claimed profile applies to the class.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The folder looked for, next to the repository (`<repo>/../shared/...`).
pub const SCHEMA_DIR: &str = "shared/ocsf-schema-1.8.0";

/// Where the schema is: `MESHGATE_OCSF_SCHEMA` if set (it must then exist), else the first
/// `shared/ocsf-schema-1.8.0` found walking up from this crate. `Err` lists the places looked.
pub fn locate() -> Result<PathBuf, Vec<PathBuf>> {
    if let Some(dir) = std::env::var_os("MESHGATE_OCSF_SCHEMA") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("dictionary.json").is_file(),
            "MESHGATE_OCSF_SCHEMA={} holds no OCSF schema (no dictionary.json)",
            dir.display()
        );
        return Ok(dir);
    }
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut looked = Vec::new();
    for dir in start.ancestors() {
        let candidate = dir.join(SCHEMA_DIR);
        if candidate.join("dictionary.json").is_file() {
            return Ok(candidate);
        }
        looked.push(candidate);
    }
    Err(looked)
}

/// The schema, or `None` after saying loudly on stderr that the test is skipped and where the
/// schema was looked for.
pub fn load_or_skip() -> Option<Schema> {
    match locate() {
        Ok(dir) => Some(Schema::load(&dir)),
        Err(looked) => {
            let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
            eprintln!(
                "SKIPPED: OCSF schema not found at {} (set MESHGATE_OCSF_SCHEMA to its folder)",
                looked.join(", ")
            );
            None
        }
    }
}

/// The schema's JSON, as read.
pub struct Schema {
    /// Every file, by its path relative to the schema folder (`profiles/host.json`).
    files: HashMap<String, Value>,
    dictionary: Map<String, Value>,
    types: Map<String, Value>,
    categories: HashMap<String, u64>,
    /// Event class files by `name`.
    events: HashMap<String, Value>,
    objects: HashMap<String, Value>,
    /// Concrete classes (base_event and those with a `uid`) by `class_uid`.
    class_names: HashMap<u64, String>,
}

/// One attribute as a class or object defines it, merged along its `extends` chain.
#[derive(Debug, Clone, Default)]
struct Attr {
    requirement: Option<String>,
    /// Only present when this profile is claimed.
    profile: Option<String>,
    /// Enum value → caption, from every definition on the way (the dictionary's too).
    enumeration: BTreeMap<String, String>,
    type_name: Option<String>,
}

/// A class or object, compiled.
#[derive(Debug, Default)]
pub struct Compiled {
    name: String,
    attrs: BTreeMap<String, Attr>,
    constraints: Map<String, Value>,
    /// Profiles that may apply (classes only).
    profiles: BTreeSet<String>,
    category: Option<String>,
    uid: u64,
    caption: String,
}

impl Schema {
    pub fn load(dir: &Path) -> Self {
        let mut files = HashMap::new();
        for path in json_files(dir) {
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_str()
                .unwrap()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).unwrap();
            let value: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            files.insert(rel, value);
        }
        let dictionary = files["dictionary.json"].clone();
        let categories = files["categories.json"]["attributes"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, c)| (name.clone(), c["uid"].as_u64().unwrap()))
            .collect();
        let by_name = |folder: &str| -> HashMap<String, Value> {
            files
                .iter()
                .filter(|(rel, _)| rel.starts_with(folder))
                .map(|(_, def)| (def["name"].as_str().unwrap().to_owned(), def.clone()))
                .collect()
        };
        let events = by_name("events/");
        let objects = by_name("objects/");
        let mut schema = Self {
            dictionary: dictionary["attributes"].as_object().unwrap().clone(),
            types: dictionary["types"]["attributes"]
                .as_object()
                .unwrap()
                .clone(),
            files,
            categories,
            events,
            objects,
            class_names: HashMap::new(),
        };
        let concrete: Vec<String> = schema
            .events
            .iter()
            .filter(|(name, def)| def.get("uid").is_some() || *name == "base_event")
            .map(|(name, _)| name.clone())
            .collect();
        for name in concrete {
            let class = schema.compile(true, &name);
            let uid = schema.category_uid(&class) * 1000 + class.uid;
            assert!(
                schema.class_names.insert(uid, name).is_none(),
                "two classes with class_uid {uid}"
            );
        }
        schema
    }

    /// The class whose `class_uid` is `uid`.
    pub fn class_by_uid(&self, uid: u64) -> Option<Compiled> {
        self.class_names
            .get(&uid)
            .map(|name| self.compile(true, name))
    }

    /// Every problem of `event`, each as `path: what`; empty when the event is valid.
    pub fn check(&self, event: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(obj) = event.as_object() else {
            return vec!["the event is not a JSON object".into()];
        };
        let Some(class_uid) = obj.get("class_uid").and_then(Value::as_u64) else {
            return vec!["class_uid: missing or not an integer".into()];
        };
        let Some(class) = self.class_by_uid(class_uid) else {
            return vec![format!("class_uid: {class_uid} is no class of the schema")];
        };
        let claimed: BTreeSet<String> = obj
            .get("metadata")
            .and_then(|m| m.get("profiles"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for p in claimed.difference(&class.profiles) {
            problems.push(format!(
                "metadata.profiles: {p} does not apply to {}",
                class.name
            ));
        }
        let category_uid = self.category_uid(&class);
        let expect = |key: &str, want: u64, problems: &mut Vec<String>| {
            let got = obj.get(key).and_then(Value::as_u64);
            if got != Some(want) {
                problems.push(format!("{key}: {got:?}, but {} needs {want}", class.name));
            }
        };
        expect("category_uid", category_uid, &mut problems);
        expect("class_uid", category_uid * 1000 + class.uid, &mut problems);
        if let Some(activity) = obj.get("activity_id").and_then(Value::as_u64) {
            expect("type_uid", class_uid * 100 + activity, &mut problems);
            if let (Some(caption), Some(name)) = (
                class.attrs["activity_id"]
                    .enumeration
                    .get(&activity.to_string()),
                obj.get("type_name").and_then(Value::as_str),
            ) {
                let caption = if activity == 99 { "Other" } else { caption };
                let want = format!("{}: {caption}", class.caption);
                if name != want {
                    problems.push(format!("type_name: {name:?}, expected {want:?}"));
                }
            }
        }
        if let Some(name) = obj.get("class_name").and_then(Value::as_str)
            && name != class.caption
        {
            problems.push(format!(
                "class_name: {name:?}, expected {:?}",
                class.caption
            ));
        }
        self.check_object("", &class, obj, &claimed, &mut problems);
        problems
    }

    /// Compiles an event class (`is_event`) or an object by name, following `extends`.
    pub fn compile(&self, is_event: bool, name: &str) -> Compiled {
        let defs = if is_event {
            &self.events
        } else {
            &self.objects
        };
        let mut chain = Vec::new();
        let mut next = Some(name.to_owned());
        while let Some(n) = next {
            let def = defs
                .get(&n)
                .unwrap_or_else(|| panic!("the schema has no {n} (extended by {name})"));
            next = def
                .get("extends")
                .and_then(Value::as_str)
                .map(str::to_owned);
            chain.push(def);
        }
        let mut c = Compiled {
            name: name.to_owned(),
            ..Compiled::default()
        };
        for def in chain.iter().rev() {
            let attrs = def["attributes"].as_object().cloned().unwrap_or_default();
            for include in attrs
                .get("$include")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.include(&mut c, include.as_str().unwrap());
            }
            for (key, spec) in attrs.iter().filter(|(k, _)| *k != "$include") {
                merge_attr(c.attrs.entry(key.clone()).or_default(), spec, None);
            }
            if let Some(constraints) = def.get("constraints").and_then(Value::as_object) {
                c.constraints = constraints.clone();
            }
            if let Some(profiles) = def.get("profiles").and_then(Value::as_array) {
                c.profiles.extend(
                    profiles
                        .iter()
                        .filter_map(|p| p.as_str().map(str::to_owned)),
                );
            }
            if let Some(category) = def.get("category").and_then(Value::as_str) {
                c.category = Some(category.to_owned());
            }
        }
        let leaf = chain[0];
        c.uid = leaf.get("uid").and_then(Value::as_u64).unwrap_or(0);
        c.caption = leaf["caption"].as_str().unwrap_or_default().to_owned();
        for (key, attr) in &mut c.attrs {
            if let Some(dict) = self.dictionary.get(key) {
                merge_enum(attr, dict);
            }
        }
        c
    }

    /// Merges an `$include`d file (a profile, whose attributes then need the profile claimed).
    fn include(&self, c: &mut Compiled, rel: &str) {
        let def = self
            .files
            .get(rel)
            .unwrap_or_else(|| panic!("the schema has no {rel} to include"));
        let profile = (def.get("meta").and_then(Value::as_str) == Some("profile"))
            .then(|| def["name"].as_str().unwrap().to_owned());
        for (key, spec) in def["attributes"].as_object().unwrap() {
            merge_attr(
                c.attrs.entry(key.clone()).or_default(),
                spec,
                profile.as_deref(),
            );
        }
    }

    fn category_uid(&self, class: &Compiled) -> u64 {
        class
            .category
            .as_deref()
            .and_then(|c| self.categories.get(c).copied())
            .unwrap_or(0)
    }

    fn check_object(
        &self,
        path: &str,
        def: &Compiled,
        obj: &Map<String, Value>,
        claimed: &BTreeSet<String>,
        problems: &mut Vec<String>,
    ) {
        let available = |a: &Attr| {
            a.profile
                .as_ref()
                .is_none_or(|p| claimed.contains(p.as_str()))
        };
        let present = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
        for (key, attr) in &def.attrs {
            if attr.requirement.as_deref() == Some("required") && available(attr) && !present(key) {
                problems.push(format!("{path}{key}: required by {}, missing", def.name));
            }
        }
        for (kind, keys) in &def.constraints {
            let keys: Vec<&str> = keys
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap())
                .collect();
            let n = keys.iter().filter(|k| present(k)).count();
            let ok = match kind.as_str() {
                "at_least_one" => n >= 1,
                "just_one" => n == 1,
                other => panic!("{}: unknown constraint {other}", def.name),
            };
            if !ok {
                let at = path.trim_end_matches('.');
                problems.push(format!("{at}: {} needs {kind} of {keys:?}", def.name));
            }
        }
        for (key, value) in obj {
            let at = format!("{path}{key}");
            let Some(attr) = def.attrs.get(key).filter(|a| available(a)) else {
                problems.push(format!(
                    "{at}: not an attribute of {} (with the profiles claimed)",
                    def.name
                ));
                continue;
            };
            let dict = self.dictionary.get(key);
            let Some(type_name) = attr
                .type_name
                .clone()
                .or_else(|| dict.and_then(|d| d["type"].as_str()).map(str::to_owned))
            else {
                problems.push(format!("{at}: the schema gives it no type"));
                continue;
            };
            let is_array = dict
                .and_then(|d| d.get("is_array"))
                .and_then(Value::as_bool)
                == Some(true);
            if key.ends_with("_id") && attr.enumeration.is_empty() {
                problems.push(format!("{at}: an _id without an enum in the schema"));
            }
            if !attr.enumeration.is_empty()
                && !matches!(key.as_str(), "class_uid" | "category_uid" | "type_uid")
            {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                match attr.enumeration.get(&text) {
                    None => problems.push(format!(
                        "{at}: {text} is not in its enum {:?}",
                        attr.enumeration.keys().collect::<Vec<_>>()
                    )),
                    Some(caption) => {
                        let sibling = dict.and_then(|d| d.get("sibling")).and_then(Value::as_str);
                        self.check_sibling(path, obj, sibling, &text, caption, problems);
                    }
                }
            }
            if is_array {
                match value.as_array() {
                    Some(items) => {
                        for (i, item) in items.iter().enumerate() {
                            self.check_value(
                                &format!("{at}[{i}]"),
                                &type_name,
                                item,
                                claimed,
                                problems,
                            );
                        }
                    }
                    None => problems.push(format!("{at}: should be an array")),
                }
            } else {
                self.check_value(&at, &type_name, value, claimed, problems);
            }
        }
    }

    /// A sibling (`status` of `status_id`) must be the value's caption; for 99 (`Other`) it
    /// must be there and say what the source means instead.
    fn check_sibling(
        &self,
        path: &str,
        obj: &Map<String, Value>,
        sibling: Option<&str>,
        value: &str,
        caption: &str,
        problems: &mut Vec<String>,
    ) {
        let Some(sibling) = sibling else { return };
        match obj.get(sibling).and_then(Value::as_str) {
            None if value == "99" => {
                problems.push(format!(
                    "{path}{sibling}: missing, but its id is 99 (Other)"
                ));
            }
            None => {}
            Some("") => problems.push(format!("{path}{sibling}: empty")),
            Some(name) if value != "99" && name != caption => problems.push(format!(
                "{path}{sibling}: {name:?}, expected the caption {caption:?}"
            )),
            Some(_) => {}
        }
    }

    fn check_value(
        &self,
        at: &str,
        type_name: &str,
        value: &Value,
        claimed: &BTreeSet<String>,
        problems: &mut Vec<String>,
    ) {
        if self.objects.contains_key(type_name) && type_name != "object" {
            match value.as_object() {
                Some(obj) => {
                    let def = self.compile(false, type_name);
                    self.check_object(&format!("{at}."), &def, obj, claimed, problems);
                }
                None => problems.push(format!("{at}: should be a {type_name} object")),
            }
            return;
        }
        let mut t = type_name;
        let mut range = None;
        while let Some(spec) = self.types.get(t) {
            if range.is_none() {
                range = spec.get("range").and_then(Value::as_array).cloned();
            }
            match spec.get("type").and_then(Value::as_str) {
                Some(base) => t = base,
                None => break,
            }
        }
        let ok = match t {
            "string_t" => value.is_string(),
            "integer_t" => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            "long_t" => value.is_i64() || value.is_u64(),
            "float_t" => value.is_number(),
            "boolean_t" => value.is_boolean(),
            "json_t" => true,
            "object" => value.is_object(),
            other => {
                problems.push(format!("{at}: unknown type {other}"));
                return;
            }
        };
        if !ok {
            problems.push(format!("{at}: {value} is not a {type_name}"));
        }
        if let (Some(range), Some(n)) = (range, value.as_i64()) {
            let (lo, hi) = (range[0].as_i64().unwrap(), range[1].as_i64().unwrap());
            if n < lo || n > hi {
                problems.push(format!("{at}: {n} is outside {lo}..={hi}"));
            }
        }
        if type_name == "ip_t" && value.as_str().is_none_or(|s| s.parse::<IpAddr>().is_err()) {
            problems.push(format!("{at}: {value} is not an IP address"));
        }
    }
}

/// Merges one definition of an attribute into what is known of it. `profile` is the profile
/// the definition comes from; a class that lists the attribute with `"profile": null` makes it
/// its own.
fn merge_attr(attr: &mut Attr, spec: &Value, profile: Option<&str>) {
    if let Some(r) = spec.get("requirement").and_then(Value::as_str) {
        attr.requirement = Some(r.to_owned());
    }
    if let Some(p) = profile {
        attr.profile = Some(p.to_owned());
    }
    if let Some(p) = spec.get("profile") {
        attr.profile = p.as_str().map(str::to_owned);
    }
    if let Some(t) = spec.get("type").and_then(Value::as_str) {
        attr.type_name = Some(t.to_owned());
    }
    merge_enum(attr, spec);
}

fn merge_enum(attr: &mut Attr, spec: &Value) {
    if let Some(values) = spec.get("enum").and_then(Value::as_object) {
        for (value, def) in values {
            let caption = def["caption"].as_str().unwrap_or_default().to_owned();
            attr.enumeration.entry(value.clone()).or_insert(caption);
        }
    }
}

/// Every `*.json` under `dir`, recursively.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    out
}
