//! An OCSF validator that reads the schema repository itself (the upstream `ocsf-schema` at a
//! release tag: `events/`, `objects/`, `profiles/`, `dictionary.json`, `categories.json`), so the
//! tests check tpa's events against the schema's own files and not against field names typed in
//! here. It compiles what it needs the way the OCSF server does: a class's attributes are its
//! `extends` chain's, `$include`d files' (profile attributes marked as such) and its own, each
//! completed from the dictionary; objects likewise. Then an event is checked for: every attribute
//! known to its class or object (profile attributes only with the profile named in
//! `metadata.profiles`), every required attribute present, JSON types from the dictionary's types
//! (with their regex, max_len and range), enum values, arrays, object constraints (`at_least_one`,
//! `just_one`), `category_uid`/`class_uid`/`type_uid` and the `*_name` siblings of `*_id` values.
//! Deprecated attributes are reported separately.
//!
//! The schema is `tests/fixtures/ocsf-schema-1.8.0` (vendored), or `TPA_OCSF_SCHEMA`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Map, Value};

pub struct Schema {
    pub version: String,
    dictionary: Map<String, Value>,
    types: Map<String, Value>,
    /// class_uid -> (caption, category uid, category caption, attributes)
    classes: HashMap<u64, Class>,
    /// object name -> attributes and constraints
    objects: HashMap<String, Compiled>,
}

struct Class {
    caption: String,
    category_uid: u64,
    category_caption: String,
    compiled: Compiled,
}

#[derive(Clone, Default)]
struct Compiled {
    attributes: BTreeMap<String, Map<String, Value>>,
    constraints: Map<String, Value>,
}

/// What checking an event found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub errors: Vec<String>,
    pub deprecated: Vec<String>,
}

pub fn schema_dir() -> PathBuf {
    match std::env::var_os("TPA_OCSF_SCHEMA") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ocsf-schema-1.8.0"),
    }
}

/// The schema, loaded once per test binary; panics when it is missing.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::load(&schema_dir()))
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "the OCSF schema file {} cannot be read ({e}): the tests need the OCSF schema repository at \
             tests/fixtures/ocsf-schema-1.8.0 (or TPA_OCSF_SCHEMA)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

/// Merges `over` into `base` attribute by attribute: keys of `over` win, enums are united.
fn merge_attribute(base: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (key, value) in over {
        match (key.as_str(), base.get_mut(key), value) {
            ("enum", Some(Value::Object(mine)), Value::Object(theirs)) => {
                for (k, v) in theirs {
                    mine.insert(k.clone(), v.clone());
                }
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

impl Schema {
    pub fn load(root: &Path) -> Schema {
        assert!(
            root.join("version.json").exists(),
            "no OCSF schema at {}: the tests need the OCSF schema repository (release 1.8.0) at \
             tests/fixtures/ocsf-schema-1.8.0, or its path in TPA_OCSF_SCHEMA",
            root.display()
        );
        let version = read(&root.join("version.json"))["version"].as_str().unwrap().to_owned();
        let dictionary_file = read(&root.join("dictionary.json"));
        let dictionary = dictionary_file["attributes"].as_object().unwrap().clone();
        let types = dictionary_file["types"]["attributes"].as_object().unwrap().clone();
        let categories = read(&root.join("categories.json"));
        let categories = categories["attributes"].as_object().unwrap();

        let mut files = Vec::new();
        json_files(&root.join("events"), &mut files);
        let events: HashMap<String, Value> =
            files.iter().map(|p| read(p)).map(|v| (v["name"].as_str().unwrap().to_owned(), v)).collect();
        let mut files = Vec::new();
        json_files(&root.join("objects"), &mut files);
        let raw_objects: HashMap<String, Value> =
            files.iter().map(|p| read(p)).map(|v| (v["name"].as_str().unwrap().to_owned(), v)).collect();

        let mut schema =
            Schema { version, dictionary, types, classes: HashMap::new(), objects: HashMap::new() };
        let mut object_cache = HashMap::new();
        for name in raw_objects.keys() {
            let compiled = schema.compile(root, name, &raw_objects, &mut object_cache);
            schema.objects.insert(name.clone(), compiled);
        }
        let mut class_cache = HashMap::new();
        for (name, event) in &events {
            let Some(uid) = event.get("uid").and_then(Value::as_u64) else { continue };
            // A class's category is its own or the one it inherits (base_event's is "other").
            let mut category = event.get("category").and_then(Value::as_str);
            let mut parent = event.get("extends").and_then(Value::as_str);
            while category.is_none() {
                let p = &events[parent.expect("a class names its category somewhere in its chain")];
                category = p.get("category").and_then(Value::as_str);
                parent = p.get("extends").and_then(Value::as_str);
            }
            let Some(cat) = categories.get(category.unwrap()) else { continue };
            let category_uid = cat["uid"].as_u64().unwrap();
            let compiled = schema.compile(root, name, &events, &mut class_cache);
            schema.classes.insert(
                category_uid * 1000 + uid,
                Class {
                    caption: event["caption"].as_str().unwrap().to_owned(),
                    category_uid,
                    category_caption: cat["caption"].as_str().unwrap().to_owned(),
                    compiled,
                },
            );
        }
        schema
    }

    /// A definition's attributes: its parent's, then its `$include`s', then its own, each
    /// completed from the dictionary.
    fn compile(
        &self,
        root: &Path,
        name: &str,
        all: &HashMap<String, Value>,
        cache: &mut HashMap<String, Compiled>,
    ) -> Compiled {
        if let Some(done) = cache.get(name) {
            return done.clone();
        }
        let defn = all.get(name).unwrap_or_else(|| panic!("OCSF definition {name} not found"));
        let mut compiled = match defn.get("extends").and_then(Value::as_str) {
            Some(parent) => self.compile(root, parent, all, cache),
            None => Compiled::default(),
        };
        let empty = Map::new();
        let own = defn.get("attributes").and_then(Value::as_object).unwrap_or(&empty);
        if let Some(includes) = own.get("$include").and_then(Value::as_array) {
            for include in includes {
                let file = read(&root.join(include.as_str().unwrap()));
                let profile = (file.get("meta").and_then(Value::as_str) == Some("profile"))
                    .then(|| file["name"].as_str().unwrap().to_owned());
                for (attr, def) in file["attributes"].as_object().unwrap() {
                    let mut def = def.as_object().unwrap().clone();
                    if let Some(profile) = &profile {
                        def.entry("profile").or_insert(Value::String(profile.clone()));
                    }
                    merge_attribute(compiled.attributes.entry(attr.clone()).or_default(), &def);
                }
            }
        }
        for (attr, def) in own.iter().filter(|(k, _)| *k != "$include") {
            merge_attribute(compiled.attributes.entry(attr.clone()).or_default(), def.as_object().unwrap());
        }
        if let Some(constraints) = defn.get("constraints").and_then(Value::as_object) {
            compiled.constraints = constraints.clone();
        }
        cache.insert(name.to_owned(), compiled.clone());
        compiled
    }

    /// The attribute as the dictionary defines it, with the definition's own settings on top.
    fn attribute(&self, name: &str, own: &Map<String, Value>) -> Map<String, Value> {
        let mut full = self.dictionary.get(name).and_then(Value::as_object).cloned().unwrap_or_default();
        merge_attribute(&mut full, own);
        full
    }

    pub fn has_class(&self, class_uid: u64) -> bool {
        self.classes.contains_key(&class_uid)
    }

    /// Checks one event against its class.
    pub fn check(&self, event: &Value) -> Verdict {
        let mut verdict = Verdict::default();
        let Some(class_uid) = event.get("class_uid").and_then(Value::as_u64) else {
            verdict.errors.push("no class_uid".into());
            return verdict;
        };
        let Some(class) = self.classes.get(&class_uid) else {
            verdict.errors.push(format!("class_uid {class_uid} is no class of OCSF {}", self.version));
            return verdict;
        };
        let profiles: Vec<String> = event["metadata"]["profiles"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        self.check_object(event, &class.compiled, "", &profiles, &mut verdict, true);

        // What the server's compiler generates for every class.
        let activity_id = event["activity_id"].as_u64().unwrap_or(u64::MAX);
        let expect = |field: &str, want: Value, verdict: &mut Verdict| {
            if event.get(field).is_some_and(|v| *v != want) {
                verdict.errors.push(format!("{field} is {} but must be {want}", event[field]));
            }
        };
        expect("category_uid", class.category_uid.into(), &mut verdict);
        expect("type_uid", (class_uid * 100 + activity_id).into(), &mut verdict);
        expect("class_name", class.caption.clone().into(), &mut verdict);
        expect("category_name", class.category_caption.clone().into(), &mut verdict);
        if let Some(activity) = class.compiled.attributes.get("activity_id") {
            let activity = self.attribute("activity_id", activity);
            if let Some(caption) =
                activity.get("enum").and_then(|e| e[activity_id.to_string()]["caption"].as_str())
            {
                let name = event["activity_name"].as_str().unwrap_or(caption);
                expect("type_name", format!("{}: {name}", class.caption).into(), &mut verdict);
            }
        }
        verdict
    }

    fn check_object(
        &self,
        value: &Value,
        defn: &Compiled,
        path: &str,
        profiles: &[String],
        verdict: &mut Verdict,
        is_class: bool,
    ) {
        let Some(object) = value.as_object() else {
            verdict.errors.push(format!("{path}: expected an object, got {value}"));
            return;
        };
        let known = |attr: &Map<String, Value>| {
            attr.get("profile").and_then(Value::as_str).is_none_or(|p| profiles.iter().any(|q| q == p))
        };
        // The `object` object (e.g. `unmapped`) has no attributes: anything goes.
        if defn.attributes.is_empty() {
            return;
        }
        for (name, own) in &defn.attributes {
            if own.get("requirement").and_then(Value::as_str) == Some("required")
                && known(own)
                && !object.contains_key(name)
            {
                verdict.errors.push(format!("{path}{name}: required, missing"));
            }
        }
        for (name, v) in object {
            let at = format!("{path}{name}");
            let Some(own) = defn.attributes.get(name).filter(|a| known(a)) else {
                verdict.errors.push(format!("{at}: not an attribute here"));
                continue;
            };
            let attr = self.attribute(name, own);
            if attr.contains_key("@deprecated") {
                verdict.deprecated.push(at.clone());
            }
            let is_array = attr.get("is_array").and_then(Value::as_bool).unwrap_or(false);
            match (is_array, v) {
                (true, Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        self.check_value(item, &attr, &format!("{at}[{i}]"), profiles, verdict, is_class);
                    }
                }
                (true, _) => verdict.errors.push(format!("{at}: expected an array")),
                (false, Value::Array(_)) => verdict.errors.push(format!("{at}: not an array attribute")),
                (false, _) => self.check_value(v, &attr, &at, profiles, verdict, is_class),
            }
            // The caption sibling of an enum id must be the enum's caption (but for 99, Other).
            if let (Some(sibling), Some(id)) = (attr.get("sibling").and_then(Value::as_str), v.as_u64())
                && id != 99
                && let Some(caption) = attr.get("enum").and_then(|e| e[id.to_string()]["caption"].as_str())
                && let Some(given) = object.get(sibling)
                && given != caption
            {
                verdict.errors.push(format!("{path}{sibling}: is {given} but {name} {id} is {caption:?}"));
            }
        }
        for (kind, fields) in &defn.constraints {
            let fields: Vec<&str> = fields.as_array().unwrap().iter().filter_map(Value::as_str).collect();
            let present = fields.iter().filter(|f| object.contains_key(**f)).count();
            match kind.as_str() {
                "at_least_one" if present == 0 => {
                    verdict.errors.push(format!("{path}: needs at least one of {fields:?}"))
                }
                "just_one" if present != 1 => {
                    verdict.errors.push(format!("{path}: needs exactly one of {fields:?}"))
                }
                _ => {}
            }
        }
    }

    fn check_value(
        &self,
        v: &Value,
        attr: &Map<String, Value>,
        at: &str,
        profiles: &[String],
        verdict: &mut Verdict,
        is_class: bool,
    ) {
        let ty = attr.get("type").and_then(Value::as_str).unwrap_or_else(|| panic!("{at}: no type"));
        if let Some(object) = self.objects.get(ty) {
            return self.check_object(v, object, &format!("{at}."), profiles, verdict, false);
        }
        // A scalar type: follow the types chain to a base type, checking each level's limits.
        let mut name = ty;
        loop {
            let Some(def) = self.types.get(name).and_then(Value::as_object) else {
                verdict.errors.push(format!("{at}: unknown type {name}"));
                return;
            };
            if let Some(pattern) = def.get("regex").and_then(Value::as_str)
                && let Some(text) = v.as_str()
                && !regex::Regex::new(pattern).unwrap().is_match(text)
            {
                verdict.errors.push(format!("{at}: {text:?} does not match {name}'s pattern"));
            }
            if let Some(max) = def.get("max_len").and_then(Value::as_u64)
                && v.as_str().is_some_and(|t| t.len() as u64 > max)
            {
                verdict.errors.push(format!("{at}: longer than {name}'s {max}"));
            }
            if let Some(range) = def.get("range").and_then(Value::as_array)
                && let (Some(lo), Some(hi), Some(n)) = (range[0].as_i64(), range[1].as_i64(), v.as_i64())
                && !(lo..=hi).contains(&n)
            {
                verdict.errors.push(format!("{at}: {n} outside {name}'s range"));
            }
            match def.get("type").and_then(Value::as_str) {
                Some(base) => name = base,
                None => break,
            }
        }
        let ok = match name {
            "string_t" => v.is_string(),
            "integer_t" | "long_t" => v.is_i64() || v.is_u64(),
            "float_t" => v.is_number(),
            "boolean_t" => v.is_boolean(),
            "json_t" => true,
            other => {
                verdict.errors.push(format!("{at}: base type {other} unknown to this validator"));
                return;
            }
        };
        if !ok {
            verdict.errors.push(format!("{at}: {v} is not a {ty} ({name})"));
        }
        // The uids and class-dependent enums are checked against the class itself (see `check`).
        let generated = is_class && matches!(at, "class_uid" | "category_uid" | "type_uid");
        if let Some(values) = attr.get("enum").and_then(Value::as_object)
            && !generated
        {
            let key = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if !values.contains_key(&key) {
                verdict
                    .errors
                    .push(format!("{at}: {v} is not one of {:?}", values.keys().collect::<Vec<_>>()));
            }
        }
    }
}
