//! [`Bridge`]: a worker of the user's own on top of a bundled bridge, and
//! the generic workers ([`GenericPython`], [`GenericJavaScript`],
//! [`GenericRuby`]) built from it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use snakepit_core::{Adapter, Launch};

use crate::policy::{policy_adapter_methods, shared_builder_methods, Policy};
use crate::{embedded, Language};

#[derive(Debug, Clone)]
enum Entry {
    Generic,
    Script(PathBuf),
    Module(String),
}

/// A worker in Python, Node.js or Ruby on top of the bundled bridge.
///
/// ```
/// use snakepit_adapters::Bridge;
/// let adapter = Bridge::python("workers/model.py")
///     .arg("--model=small")
///     .env("OMP_NUM_THREADS", "1")
///     .command_timeout(std::time::Duration::from_secs(120));
/// ```
#[derive(Debug, Clone)]
pub struct Bridge {
    language: Language,
    entry: Entry,
    interpreter: Option<PathBuf>,
    /// The user's arguments, environment and directory; the interpreter,
    /// the entry and the module path are added at launch. Its program is
    /// not used.
    user: Launch,
    policy: Policy,
}

impl Bridge {
    fn new(language: Language, entry: Entry) -> Self {
        Bridge {
            language,
            entry,
            interpreter: None,
            user: Launch::new(PathBuf::new()),
            policy: Policy::default(),
        }
    }

    /// The bundled generic worker of `language`.
    pub fn generic(language: Language) -> Self {
        Bridge::new(language, Entry::Generic)
    }

    /// A script of yours in `language`.
    pub(crate) fn script(language: Language, script: impl Into<PathBuf>) -> Self {
        Bridge::new(language, Entry::Script(script.into()))
    }

    /// A Python script of yours.
    pub fn python(script: impl Into<PathBuf>) -> Self {
        Bridge::script(Language::Python, script)
    }

    /// A Python module of yours, run as `python -m MODULE`.
    pub fn python_module(module: impl Into<String>) -> Self {
        Bridge::new(Language::Python, Entry::Module(module.into()))
    }

    /// A Node.js script of yours.
    pub fn node(script: impl Into<PathBuf>) -> Self {
        Bridge::script(Language::Node, script)
    }

    /// A Ruby script of yours.
    pub fn ruby(script: impl Into<PathBuf>) -> Self {
        Bridge::script(Language::Ruby, script)
    }

    shared_builder_methods!(user);

    /// Runs this interpreter instead of discovering one.
    pub fn interpreter(mut self, path: impl Into<PathBuf>) -> Self {
        self.interpreter = Some(path.into());
        self
    }

    /// Loads the script once, in a template process, and forks every worker
    /// from it: workers share what the script loaded at module level
    /// (copy-on-write) and a replacement starts in milliseconds. Python and
    /// Ruby; a Node.js pool fails to start with a clear error, as Node
    /// cannot fork. See docs/preload.md for what does not survive a fork.
    ///
    /// ```
    /// use snakepit_adapters::Bridge;
    /// let adapter = Bridge::python("workers/model.py").preload();
    /// ```
    pub fn preload(mut self) -> Self {
        self.user.preload = true;
        self
    }

    /// The deadline of calls that do not set their own (default 30 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.policy.default_timeout = timeout;
        self
    }

    /// The interpreter's arguments up to the user's own: unbuffered Python,
    /// the entry, the pool-worker mode. (What cannot be written here, the
    /// bundled files, fails the start in [`Adapter::check`].)
    fn bridge_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if self.language == Language::Python {
            // Unbuffered stdout and stderr: what a worker logs reaches the
            // host as it is written.
            args.push("-u".into());
        }
        match &self.entry {
            Entry::Generic => {
                // No `--snakepit-run-id`: `ps` shows command lines to every
                // user; the run id stays in the environment.
                if let Ok(script) = embedded::generic_worker(self.language) {
                    args.push(script.into());
                }
            }
            Entry::Script(script) => {
                // An ES module worker runs through the launcher that lets
                // its `import` find the bridge.
                if self.language == Language::Node && self.is_es_module(script) {
                    if let Ok(main) = embedded::node_esm_main() {
                        args.push(main.into());
                    }
                }
                args.push(not_an_option(script));
            }
            Entry::Module(module) => args.extend(["-m".into(), module.into()]),
        }
        args.extend(["--mode".into(), "pool-worker".into()]);
        args
    }

    /// Whether Node.js loads `script` as an ES module: `.mjs`; `.js` (or a
    /// file without an extension) in a package whose nearest
    /// `package.json` says `"type": "module"`; or one whose package says
    /// no type (or that is in no package) and that is written as an ES
    /// module, with `import` or `export` statements or an `await` at its
    /// top level: Node.js 20.19, 22.7 and later run such a file as one
    /// (earlier ones fail on its syntax with or without the launcher).
    fn is_es_module(&self, script: &Path) -> bool {
        match script.extension().and_then(|e| e.to_str()) {
            Some("mjs") => true,
            // Node.js reads a file without an extension as it reads `.js`.
            Some("js") | None => {
                let full = match &self.user.cwd {
                    Some(cwd) if script.is_relative() => cwd.join(script),
                    _ => script.to_path_buf(),
                };
                // Node decides by the real file's place: a link's target
                // is looked up from where it lies.
                let Ok(full) = std::fs::canonicalize(&full).or_else(|_| std::path::absolute(full))
                else {
                    return false;
                };
                let package = full
                    .ancestors()
                    .skip(1)
                    .map(|dir| dir.join("package.json"))
                    .find(|p| p.is_file());
                let kind = match package {
                    None => serde_json::Value::Null,
                    Some(package) => {
                        // Node.js reads a `package.json` that starts with
                        // a byte order mark as one without.
                        let Some(package) = std::fs::read(package).ok().and_then(|text| {
                            let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&text);
                            serde_json::from_slice::<serde_json::Value>(text).ok()
                        }) else {
                            // Node.js refuses it itself, and says why.
                            return false;
                        };
                        package["type"].clone()
                    }
                };
                match kind {
                    serde_json::Value::Null => written_as_es_module(&full),
                    kind => kind == "module",
                }
            }
            _ => false,
        }
    }

    /// What `script` is, as the worker would open it (a relative path from
    /// the worker's directory), when it is a FIFO, a device or a socket:
    /// no script at all. `None` for anything else, and for what does not
    /// exist (the interpreter's own error says so).
    fn not_a_script(&self, script: &Path) -> Option<&'static str> {
        use std::os::unix::fs::FileTypeExt;
        let full = match &self.user.cwd {
            Some(cwd) if script.is_relative() => cwd.join(script),
            _ => script.to_path_buf(),
        };
        // Not opened: opening a FIFO would block.
        let kind = std::fs::metadata(full).ok()?.file_type();
        if kind.is_fifo() {
            Some("a FIFO")
        } else if kind.is_char_device() {
            Some("a character device")
        } else if kind.is_block_device() {
            Some("a block device")
        } else if kind.is_socket() {
            Some("a socket")
        } else {
            None
        }
    }
}

/// Whether the JavaScript file at `path` has a line that starts with an
/// `import` or `export` statement, outside comments, or an `await` at its
/// top level: what makes Node.js run a file of no declared type as an ES
/// module. Strings are not parsed,
/// so a line of a template literal that starts like a statement counts
/// too; a file that cannot be read counts as not one (Node.js says why).
fn written_as_es_module(path: &Path) -> bool {
    use std::io::Read;
    // A worker's script is small; the first MiB holds its imports.
    // Only a file is opened: opening a FIFO would block (`check` refuses
    // one, but a launch may be asked for without a check).
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(1 << 20).read_to_end(&mut bytes));
    if read.is_err() {
        return false;
    }
    // Node.js reads a script that starts with a byte order mark as one
    // without.
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    let text = String::from_utf8_lossy(bytes);
    let mut in_comment = false;
    for line in text.lines() {
        // The line with its comments taken out.
        let mut code = String::new();
        let mut rest = line;
        loop {
            if in_comment {
                match rest.find("*/") {
                    Some(end) => {
                        rest = &rest[end + 2..];
                        in_comment = false;
                    }
                    None => break,
                }
            } else {
                let block = rest.find("/*");
                let line_comment = rest.find("//");
                match (block, line_comment) {
                    (Some(b), l) if l.is_none_or(|l| b < l) => {
                        code.push_str(&rest[..b]);
                        code.push(' ');
                        rest = &rest[b + 2..];
                        in_comment = true;
                    }
                    (_, Some(l)) => {
                        code.push_str(&rest[..l]);
                        break;
                    }
                    _ => {
                        code.push_str(rest);
                        break;
                    }
                }
            }
        }
        if starts_a_module_statement(code.trim_start()) || code.contains("import.meta") {
            return true;
        }
    }
    awaits_at_top_level(&text)
}

/// Whether `code` has an `await` outside every function and class: what
/// else makes Node.js 20.19, 22.7 and later run a file of no declared type
/// as an ES module. Comments, strings and template literals are skipped;
/// braces are told apart as blocks and object literals (an `await` there
/// is still the module's) or bodies of functions, methods and classes (an
/// `await` there is theirs), and an `await` after `=>` or `function` in
/// its statement is taken for the function's. Regular expressions are not
/// parsed: one holding a brace or a quote can mislead it.
fn awaits_at_top_level(code: &str) -> bool {
    let bytes = code.as_bytes();
    let word_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    // For each open brace, whether it opened a body of a function or class
    // or a `${` of a template literal; the outermost scope is the module's.
    let mut braces: Vec<Brace> = Vec::new();
    // How many of them are bodies of functions or classes (counted, not
    // looked for: a file of a million braces is read in linear time).
    let mut functions = 0usize;
    // Whether the current statement, since the last `;` or brace, defines
    // a function or class (a `{` it opens is that one's body).
    let mut defines_function = false;
    // The word before each open `(`, and before the `(` last closed.
    let mut parens: Vec<&str> = Vec::new();
    let mut closed_paren: Option<&str> = None;
    let mut last_word = "";
    let mut no_regex_before = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        if word_byte(b) {
            let end = (i..bytes.len())
                .find(|&j| !word_byte(bytes[j]))
                .unwrap_or(bytes.len());
            let word = &code[i..end];
            if matches!(word, "function" | "class") {
                defines_function = true;
            }
            // Not a property (`x.await`), nor a variable named `await`
            // (which CommonJS allows).
            let property = code[..i].trim_end().ends_with('.');
            let operand = code[end..].trim_start().bytes().next();
            let awaits =
                word == "await" && !property && operand.is_some_and(|c| !b"=,;:)]}.?".contains(&c));
            if awaits && functions == 0 && !defines_function {
                return true;
            }
            last_word = word;
            i = end;
            continue;
        }
        match b {
            b'/' if next == Some(b'/') => {
                i = code[i..].find('\n').map_or(bytes.len(), |n| i + n);
                continue;
            }
            b'/' if next == Some(b'*') => {
                i = code[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
                continue;
            }
            b'/' => {
                // A regular expression where an operand may start (where
                // a division could not), skipped; else a division.
                let before = code[..i].trim_end();
                let operand = match before.bytes().last() {
                    None => true,
                    Some(p) if word_byte(p) => matches!(
                        last_word,
                        "return"
                            | "typeof"
                            | "case"
                            | "do"
                            | "else"
                            | "in"
                            | "of"
                            | "new"
                            | "delete"
                            | "void"
                            | "throw"
                            | "yield"
                            | "await"
                    ),
                    Some(p) => !b")]".contains(&p),
                };
                if operand && i >= no_regex_before {
                    match regex_end(bytes, i + 1) {
                        Ok(end) => {
                            i = end;
                            continue;
                        }
                        // None closes on this line: not looked for again
                        // there (a line of a million `/[` is read once).
                        Err(line_end) => no_regex_before = line_end,
                    }
                }
            }
            b'\'' | b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'`' => {
                i = template_end(bytes, i + 1, &mut braces);
                continue;
            }
            b'}' if braces.last() == Some(&Brace::Template) => {
                braces.pop();
                i = template_end(bytes, i + 1, &mut braces);
                continue;
            }
            b'(' => parens.push(last_word),
            b')' => closed_paren = parens.pop(),
            b'{' => {
                // After `)`: a method's parameters, unless a statement's
                // condition or a `catch`.
                let after_paren = code[..i].trim_end().ends_with(')');
                let statement = matches!(
                    closed_paren,
                    Some("if" | "for" | "while" | "switch" | "catch" | "with" | "await")
                );
                let function = defines_function || (after_paren && !statement);
                if function {
                    functions += 1;
                }
                braces.push(if function {
                    Brace::Function
                } else {
                    Brace::Block
                });
                defines_function = false;
            }
            b'}' => {
                if braces.pop() == Some(Brace::Function) {
                    functions -= 1;
                }
                defines_function = false;
            }
            b';' => defines_function = false,
            b'=' if next == Some(b'>') => defines_function = true,
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            last_word = "";
        }
        i += 1;
    }
    false
}

/// Just past the `/` that closes the regular expression whose pattern
/// starts at `i` (a `/` in a `[...]` class or after `\\` does not close
/// it); or, when the line ends first (then it was not one), where it ends.
fn regex_end(bytes: &[u8], mut i: usize) -> Result<usize, usize> {
    let mut in_class = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => return Err(i),
            b'\\' => i += 1,
            b'[' => in_class = true,
            b']' => in_class = false,
            b'/' if !in_class => return Ok(i + 1),
            _ => {}
        }
        i += 1;
    }
    Err(bytes.len())
}

/// What an open brace of a JavaScript file opened.
#[derive(Debug, PartialEq, Eq)]
enum Brace {
    /// A block or an object literal.
    Block,
    /// The body of a function, method or class.
    Function,
    /// A `${` of a template literal.
    Template,
}

/// Where the template literal whose text starts at `i` ends: just past
/// its closing backquote, or just past a `${` (pushed on `braces`), or the
/// end of `bytes`.
fn template_end(bytes: &[u8], mut i: usize, braces: &mut Vec<Brace>) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'`' => return i + 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                braces.push(Brace::Template);
                return i + 2;
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Whether `code` starts with an `import` or `export` statement (not a
/// call such as `import('x')`, nor a name such as `exports`).
fn starts_a_module_statement(code: &str) -> bool {
    for keyword in ["import", "export"] {
        let Some(rest) = code.strip_prefix(keyword) else {
            continue;
        };
        let next = rest.trim_start();
        let spaced = next.len() != rest.len();
        match next.chars().next() {
            Some('{' | '*') => return true,
            Some('"' | '\'') if keyword == "import" => return true,
            Some(c) if spaced && (c.is_alphabetic() || c == '_' || c == '$') => return true,
            _ => {}
        }
    }
    false
}

/// `script` as an argument no interpreter takes for an option of its own:
/// a relative path starting with `-` gets `./` in front.
fn not_an_option(script: &Path) -> OsString {
    if script.is_relative() && script.as_os_str().as_encoded_bytes().starts_with(b"-") {
        Path::new(".").join(script).into()
    } else {
        script.into()
    }
}

/// Prepends `dir` to a path-list variable, keeping what the user set.
fn prepend_path(var: &str, dir: PathBuf, extra: &[(OsString, OsString)]) -> OsString {
    let existing = extra
        .iter()
        .rev()
        .find(|(k, _)| k == var)
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var_os(var));
    let mut parts = vec![dir];
    if let Some(existing) = existing {
        // An empty entry means the current directory to Python, Node and
        // Ruby alike: an empty variable adds none.
        parts.extend(std::env::split_paths(&existing).filter(|p| !p.as_os_str().is_empty()));
    }
    // `check` refused a directory `join_paths` cannot take (one holding `:`).
    std::env::join_paths(parts).unwrap_or_default()
}

impl Adapter for Bridge {
    /// The bundled bridge's files written, in a directory its module path
    /// can name: otherwise no worker could start, and the interpreter's own
    /// error ("No module named snakepit_bridge") would not say why.
    fn check(&self) -> Result<(), String> {
        // Its error names the directory it could not write to.
        let dir = embedded::module_dir(self.language).map_err(|e| e.to_string())?;
        if std::env::join_paths([&dir]).is_err() {
            return Err(format!(
                "the bundled bridge files are in {}, which {} cannot name: a path list \
                 cannot hold `:` (set SNAKEPIT_BRIDGE_DIR to a directory without one)",
                dir.display(),
                self.language.path_var()
            ));
        }
        if let Entry::Module(module) = &self.entry {
            if module.is_empty() {
                // Python would fail with "No module named ", naming none.
                return Err("the module name is empty".into());
            }
        }
        if let Entry::Script(script) = &self.entry {
            if script.as_os_str().is_empty() {
                // Python would run the `__main__.py` of its directory; Node.js
                // and Ruby would read their program from the pool's pipe.
                return Err("the script path is empty".into());
            }
            if let Some(what) = self.not_a_script(script) {
                return Err(format!(
                    "the script {} is {what}, not a file: an interpreter would block on it \
                     or read it without end",
                    script.display()
                ));
            }
        }
        Ok(())
    }

    fn launch(&self) -> Launch {
        let lang = self.language;
        let path_var = lang.path_var();
        let mut launch = self.user.clone();
        launch.program = lang.find_interpreter(self.interpreter.as_ref());
        launch.args = self.bridge_args();
        launch.args.extend(self.user.args.iter().cloned());
        launch.env.clear();
        if let Ok(dir) = embedded::module_dir(lang) {
            let paths = prepend_path(path_var, dir, &self.user.env);
            launch.env.push((path_var.into(), paths));
        }
        let user_env = self.user.env.iter().filter(|(k, _)| k != path_var);
        launch.env.extend(user_env.cloned());
        launch
    }

    policy_adapter_methods!();
}

macro_rules! generic_adapter {
    ($(#[$doc:meta])* $name:ident, $lang:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl Adapter for $name {
            fn launch(&self) -> Launch {
                Bridge::generic($lang).launch()
            }
            fn check(&self) -> Result<(), String> {
                Bridge::generic($lang).check()
            }
        }
    };
}

generic_adapter!(
    /// The bundled Python bridge with the generic commands (JSON codec).
    GenericPython,
    Language::Python
);
generic_adapter!(
    /// The bundled Node.js bridge with the generic commands, `random` too (JSON codec).
    GenericJavaScript,
    Language::Node
);
generic_adapter!(
    /// The bundled Ruby bridge with the generic commands (JSON codec).
    GenericRuby,
    Language::Ruby
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_statements_are_told_from_calls_names_and_comments() {
        for yes in [
            "import { Worker } from 'x';",
            "import x from 'x'",
            "import * as x from 'x'",
            "import 'x';",
            "export default 1",
            "export{ a }",
            "export const a = 1",
        ] {
            assert!(starts_a_module_statement(yes), "{yes}");
        }
        for no in [
            "import('x')",
            "import ('x')",
            "import.meta",
            "exports.a = 1",
            "important()",
            "const x = require('x')",
        ] {
            assert!(!starts_a_module_statement(no), "{no}");
        }
    }

    #[test]
    fn an_await_is_told_at_the_top_level_from_one_in_a_function() {
        for yes in [
            "const { Worker } = await import('snakepit-bridge');",
            "await main()",
            "try { await main(); } catch (e) { process.exit(1); }",
            "if (x) { await y } else { }",
            "for await (const x of xs) {}",
            "const o = { a: await f() };",
            "function f() { return 1 }\nawait f();",
            "const f = async () => g();\nawait f();",
            "const s = `${1}`; await s;",
            "console.log(await f());",
            "const r = /x{2}/; await f(r);",
            "const half = 4 / 2; await f(half / 2);",
        ] {
            assert!(awaits_at_top_level(yes), "{yes}");
        }
        for no in [
            "const f = async () => await g();",
            "async function f() { await g(); }",
            "const o = { async m() { await g(); } };",
            "class A { async m() { await g(); } }",
            "x.then(async (r) => { await r; });",
            "// await f()",
            "/* await f() */",
            "const s = 'await f()';",
            "const t = `await ${'x'} f()`;",
            "const t = `${ (async () => { await f() })() }`;",
            "x.await(1)",
            "var await = 1; await = 2;",
            "async function f(s) { s = s.replace(/}/g, ''); await g(s); }",
            "async function f(s) { return /['{]/.test(s) && await g(s); }",
            "async function f(a, b) { const c = a / b; await g(c / 2); }",
        ] {
            assert!(!awaits_at_top_level(no), "{no}");
        }
    }

    #[test]
    fn a_megabyte_of_nested_braces_or_unclosed_patterns_is_read_through_once() {
        // Each word in half a million braces, and each `/` of a line of
        // `/[`, looked over what came before or after it would take hours.
        let braces = format!(
            "function f() {}{}await g()",
            "{".repeat(1 << 19),
            " await a;".repeat(1 << 17)
        );
        assert!(!awaits_at_top_level(&braces));
        let patterns = format!("({}\nawait g()", "/[".repeat(1 << 19));
        assert!(awaits_at_top_level(&patterns));
    }

    #[test]
    fn a_launch_is_the_interpreter_the_bridge_and_then_the_users_settings() {
        let adapter = Bridge::python("w.py")
            .interpreter("/opt/py")
            .args(["--a", "--b"])
            .env("PYTHONPATH", "/mine")
            .env("A", "1")
            .cwd("/work")
            .timeout_for("slow", Duration::from_secs(120))
            .command_timeout(Duration::from_secs(5));
        let launch = adapter.launch();
        assert_eq!(launch.program, PathBuf::from("/opt/py"));
        assert_eq!(
            launch.args,
            ["-u", "w.py", "--mode", "pool-worker", "--a", "--b"].map(OsString::from)
        );
        let (var, paths) = &launch.env[0];
        assert_eq!(var, "PYTHONPATH");
        let paths: Vec<PathBuf> = std::env::split_paths(paths).collect();
        assert_eq!(paths.len(), 2, "{paths:?}");
        assert_eq!(paths[0], embedded::module_dir(Language::Python).unwrap());
        assert_eq!(paths[1], PathBuf::from("/mine"));
        assert_eq!(launch.env[1..], [("A".into(), "1".into())]);
        assert_eq!(launch.cwd, Some(PathBuf::from("/work")));
        assert_eq!(
            Adapter::command_timeout(&adapter, "slow"),
            Duration::from_secs(120)
        );
        assert_eq!(
            Adapter::command_timeout(&adapter, "other"),
            Duration::from_secs(5)
        );
    }
}
