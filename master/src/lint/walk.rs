//! The checker's walk over a script's syntax tree, in source order, with the script's
//! own scopes (locals, parameters, loop variables) so that a `local fs = ...` is never
//! taken for the module, and with the function nesting depth of every name, so that a
//! task body's assignments to what it captured can be told apart from its own locals.

use full_moon::ast::{
    Block, Call, Expression, Field, FunctionArgs, FunctionBody, FunctionCall, Index, LastStmt,
    Parameter, Prefix, Stmt, Suffix, Var,
};
use full_moon::tokenizer::{TokenReference, TokenType};
use sloth_lua::opts::suggest;

use super::known::{Api, HOST_ARGS, PATTERN_ARGS, TASK_STARTERS};
use super::{Finding, Level};
use crate::engine::inventory::Inventory;

pub struct Walker<'a> {
    api: Api,
    inventory: Option<&'a Inventory>,
    /// Names declared in each open scope, with the function depth they belong to.
    scopes: Vec<Vec<(String, usize)>>,
    /// Current function nesting (the script's body is 0).
    depth: usize,
    /// Depths of the task bodies being walked (outermost first).
    tasks: Vec<usize>,
    findings: Vec<Finding>,
}

/// The text of a name token.
fn text(t: &TokenReference) -> String {
    t.token().to_string()
}

fn line(t: &TokenReference) -> usize {
    t.token().start_position().line()
}

/// The value of a string literal token.
fn string_literal(t: &TokenReference) -> Option<String> {
    match t.token().token_type() {
        TokenType::StringLiteral { literal, .. } => Some(literal.to_string()),
        _ => None,
    }
}

/// A literal string expression's value and token.
fn literal(e: &Expression) -> Option<(String, &TokenReference)> {
    match e {
        Expression::String(t) => string_literal(t).map(|s| (s, t)),
        _ => None,
    }
}

/// The arguments of a call, as expressions where they are (a `f{...}` or `f"..."`
/// call has one, not an expression in the tree: `None` then, and the caller looks at
/// the `FunctionArgs` itself).
fn arg<'e>(args: &'e FunctionArgs, n: usize) -> Option<Arg<'e>> {
    match args {
        FunctionArgs::Parentheses { arguments, .. } => arguments.iter().nth(n - 1).map(Arg::Expr),
        FunctionArgs::TableConstructor(t) if n == 1 => Some(Arg::Table(t)),
        FunctionArgs::String(s) if n == 1 => Some(Arg::Str(s)),
        _ => None,
    }
}

enum Arg<'e> {
    Expr(&'e Expression),
    Table(&'e full_moon::ast::TableConstructor),
    Str(&'e TokenReference),
}

impl<'e> Arg<'e> {
    fn table(&self) -> Option<&'e full_moon::ast::TableConstructor> {
        match self {
            Arg::Table(t) => Some(t),
            Arg::Expr(Expression::TableConstructor(t)) => Some(t),
            _ => None,
        }
    }

    fn string(&self) -> Option<(String, &'e TokenReference)> {
        match self {
            Arg::Str(t) => string_literal(t).map(|s| (s, *t)),
            Arg::Expr(e) => literal(e),
            Arg::Table(_) => None,
        }
    }
}

impl<'a> Walker<'a> {
    pub fn new(inventory: Option<&'a Inventory>) -> Walker<'a> {
        Walker {
            api: Api::new(),
            inventory,
            scopes: vec![Vec::new()],
            depth: 0,
            tasks: Vec::new(),
            findings: Vec::new(),
        }
    }

    pub fn run(mut self, block: &Block) -> Vec<Finding> {
        self.block(block);
        self.findings
    }

    fn report(&mut self, line: usize, level: Level, message: String) {
        self.findings.push(Finding {
            line,
            level,
            message,
        });
    }

    fn declare(&mut self, name: String) {
        let depth = self.depth;
        if let Some(s) = self.scopes.last_mut() {
            s.push((name, depth));
        }
    }

    /// The function depth a name was declared at, or `None` for a global.
    fn resolve(&self, name: &str) -> Option<usize> {
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.iter().rev())
            .find(|(n, _)| n == name)
            .map(|(_, d)| *d)
    }

    /// `name` is one of sloth's modules here (not shadowed by a local).
    fn module(&self, name: &str) -> bool {
        self.resolve(name).is_none() && self.api.is_module(name)
    }

    fn block(&mut self, b: &Block) {
        self.scopes.push(Vec::new());
        self.stmts(b);
        self.scopes.pop();
    }

    fn stmts(&mut self, b: &Block) {
        for s in b.stmts() {
            self.stmt(s);
        }
        if let Some(LastStmt::Return(r)) = b.last_stmt() {
            for e in r.returns().iter() {
                self.expr(e);
            }
        }
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Assignment(a) => {
                for v in a.variables().iter() {
                    self.assigned(v);
                }
                for e in a.expressions().iter() {
                    self.expr(e);
                }
            }
            Stmt::LocalAssignment(l) => {
                for e in l.expressions().iter() {
                    self.expr(e);
                }
                for n in l.names().iter() {
                    self.declare(text(n));
                }
            }
            Stmt::LocalFunction(f) => {
                self.declare(text(f.name()));
                self.function(f.body(), false, false);
            }
            Stmt::FunctionDeclaration(f) => {
                let method = f.name().method_name().is_some();
                self.function(f.body(), false, method);
            }
            Stmt::FunctionCall(c) => self.call(c),
            Stmt::Do(d) => self.block(d.block()),
            Stmt::While(w) => {
                self.expr(w.condition());
                self.block(w.block());
            }
            Stmt::Repeat(r) => {
                // The condition sees the body's locals.
                self.scopes.push(Vec::new());
                self.stmts(r.block());
                self.expr(r.until());
                self.scopes.pop();
            }
            Stmt::If(i) => {
                self.expr(i.condition());
                self.block(i.block());
                for e in i.else_if().into_iter().flatten() {
                    self.expr(e.condition());
                    self.block(e.block());
                }
                if let Some(b) = i.else_block() {
                    self.block(b);
                }
            }
            Stmt::NumericFor(f) => {
                self.expr(f.start());
                self.expr(f.end());
                if let Some(s) = f.step() {
                    self.expr(s);
                }
                self.scopes
                    .push(vec![(text(f.index_variable()), self.depth)]);
                self.block(f.block());
                self.scopes.pop();
            }
            Stmt::GenericFor(f) => {
                for e in f.expressions().iter() {
                    self.expr(e);
                }
                let names = f.names().iter().map(|n| (text(n), self.depth)).collect();
                self.scopes.push(names);
                self.block(f.block());
                self.scopes.pop();
            }
            _ => {}
        }
    }

    /// A function body: its parameters are its own locals; a task body's
    /// assignments to what it captured are flagged.
    fn function(&mut self, body: &FunctionBody, task: bool, method: bool) {
        self.depth += 1;
        if task {
            self.tasks.push(self.depth);
        }
        let mut params: Vec<(String, usize)> = body
            .parameters()
            .iter()
            .filter_map(|p| match p {
                Parameter::Name(n) => Some((text(n), self.depth)),
                _ => None,
            })
            .collect();
        if method {
            params.push(("self".into(), self.depth));
        }
        self.scopes.push(params);
        self.block(body.block());
        self.scopes.pop();
        if task {
            self.tasks.pop();
        }
        self.depth -= 1;
    }

    fn expr(&mut self, e: &Expression) {
        match e {
            Expression::BinaryOperator { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expression::UnaryOperator { expression, .. } => self.expr(expression),
            Expression::Parentheses { expression, .. } => self.expr(expression),
            Expression::Function(f) => self.function(f.body(), false, false),
            Expression::FunctionCall(c) => self.call(c),
            Expression::TableConstructor(t) => self.table(t),
            Expression::Var(Var::Expression(v)) => {
                self.path(v.prefix(), v.suffixes().collect());
            }
            _ => {}
        }
    }

    fn table(&mut self, t: &full_moon::ast::TableConstructor) {
        for f in t.fields().iter() {
            match f {
                Field::ExpressionKey { key, value, .. } => {
                    self.expr(key);
                    self.expr(value);
                }
                Field::NameKey { value, .. } => self.expr(value),
                Field::NoKey(v) => self.expr(v),
                _ => {}
            }
        }
    }

    /// A prefix and its suffixes (`fs.wirte`, `x.y(1):z()`): a module function that
    /// does not exist is reported; calls are checked; every argument is walked.
    fn path(&mut self, prefix: &Prefix, suffixes: Vec<&Suffix>) {
        match prefix {
            Prefix::Expression(e) => self.expr(e),
            Prefix::Name(n) => {
                let name = text(n);
                if self.module(&name) {
                    if let Some((f, tok)) = suffixes.first().and_then(|s| member(s)) {
                        self.known_function(&name, &f, tok);
                    }
                }
            }
            _ => {}
        }
        // A call right after `M.f` (or `f` alone) is a call of that function.
        let callee = match (prefix, suffixes.first(), suffixes.get(1)) {
            (Prefix::Name(n), Some(Suffix::Call(c)), _) => Some((text(n), c, line(n))),
            (Prefix::Name(n), Some(s), Some(Suffix::Call(c))) => match member(s) {
                Some((f, t)) if self.module(&text(n)) => {
                    Some((format!("{}.{f}", text(n)), c, line(t)))
                }
                _ => None,
            },
            _ => None,
        };
        if let Some((name, Call::AnonymousCall(args), _)) = callee {
            if self
                .resolve(name.split('.').next().unwrap_or_default())
                .is_none()
            {
                self.sloth_call(&name, args);
            }
        }
        for s in suffixes {
            match s {
                Suffix::Index(Index::Brackets { expression, .. }) => self.expr(expression),
                Suffix::Call(Call::AnonymousCall(args)) => self.args(args, false),
                Suffix::Call(Call::MethodCall(m)) => self.args(m.args(), false),
                _ => {}
            }
        }
    }

    fn call(&mut self, c: &FunctionCall) {
        let suffixes: Vec<&Suffix> = c.suffixes().collect();
        // The function arguments of a task starter are task bodies.
        let starter = match (c.prefix(), suffixes.first(), suffixes.get(1)) {
            (Prefix::Name(n), Some(s), Some(Suffix::Call(Call::AnonymousCall(args))))
                if member(s).is_some_and(|(f, _)| {
                    self.module(&text(n))
                        && TASK_STARTERS.contains(&format!("{}.{f}", text(n)).as_str())
                }) =>
            {
                Some(args)
            }
            _ => None,
        };
        if let Some(args) = starter {
            // Everything but the task bodies is walked as usual by `path`; the bodies
            // are walked here, as tasks.
            self.path(c.prefix(), suffixes[..1].to_vec());
            if let Some(name) = match c.prefix() {
                Prefix::Name(n) => suffixes
                    .first()
                    .and_then(|s| member(s))
                    .map(|(f, t)| (format!("{}.{f}", text(n)), line(t))),
                _ => None,
            } {
                self.sloth_call(&name.0, args);
            }
            self.args(args, true);
            for s in &suffixes[2..] {
                if let Suffix::Call(Call::AnonymousCall(a)) = s {
                    self.args(a, false);
                }
            }
            return;
        }
        self.path(c.prefix(), suffixes);
    }

    fn args(&mut self, args: &FunctionArgs, task: bool) {
        match args {
            FunctionArgs::Parentheses { arguments, .. } => {
                for a in arguments.iter() {
                    match a {
                        Expression::Function(f) if task => self.function(f.body(), true, false),
                        other => self.expr(other),
                    }
                }
            }
            FunctionArgs::TableConstructor(t) => self.table(t),
            _ => {}
        }
    }

    /// `m.f` must exist.
    fn known_function(&mut self, m: &str, f: &str, tok: &TokenReference) {
        if self.api.exists(m, f) {
            return;
        }
        let functions = self.api.functions(m);
        let full: Vec<String> = functions.iter().map(|g| format!("{m}.{g}")).collect();
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let hint = suggest(&format!("{m}.{f}"), &refs);
        let hint = if hint.is_empty() {
            format!(" ({m} has {})", functions.join(", "))
        } else {
            hint
        };
        self.report(
            line(tok),
            Level::Error,
            format!("unknown function {m}.{f}{hint}"),
        );
    }

    /// A call of one of sloth's functions: its literal options table, `delegate_to`
    /// and host patterns.
    fn sloth_call(&mut self, function: &str, args: &FunctionArgs) {
        if let Some(t) = self.api.option_table(function) {
            if let Some(table) = arg(args, t.arg).and_then(|a| a.table()) {
                self.option_keys(function, t.keys, t.arg == 1, table);
                if t.keys.contains(&"delegate_to") {
                    self.delegate_to(function, table);
                }
            }
        }
        let first = arg(args, 1).and_then(|a| a.string());
        if let (Some(inv), Some((s, tok))) = (self.inventory, first) {
            if PATTERN_ARGS.contains(&function) {
                if let Err(e) = inv.resolve(&s) {
                    self.report(line(tok), Level::Error, format!("{function}: {e}"));
                }
            } else if HOST_ARGS.contains(&function) && inv.get(&s).is_none() {
                self.report(
                    line(tok),
                    Level::Error,
                    format!("{function}: '{s}' is not a host of the inventory"),
                );
            }
        }
    }

    fn option_keys(
        &mut self,
        function: &str,
        keys: &[&str],
        positional_first: bool,
        table: &full_moon::ast::TableConstructor,
    ) {
        for (i, f) in table.fields().iter().enumerate() {
            let (key, tok) = match f {
                Field::NameKey { key, .. } => (text(key), key),
                Field::ExpressionKey {
                    key: Expression::String(t),
                    ..
                } => match string_literal(t) {
                    Some(s) => (s, t),
                    None => continue,
                },
                Field::NoKey(e) if !(positional_first && i == 0) => {
                    let at = first_line(e);
                    self.report(
                        at,
                        Level::Error,
                        format!(
                            "{function}: its options table takes no positional value (known: {})",
                            keys.join(", ")
                        ),
                    );
                    continue;
                }
                _ => continue,
            };
            if !keys.contains(&key.as_str()) {
                self.report(
                    line(tok),
                    Level::Error,
                    format!(
                        "{function}: unknown option '{key}'{} (known: {})",
                        suggest(&key, keys),
                        keys.join(", ")
                    ),
                );
            }
        }
    }

    /// A literal `delegate_to` must name a host (a pattern for a pool).
    fn delegate_to(&mut self, function: &str, table: &full_moon::ast::TableConstructor) {
        let Some(inv) = self.inventory else { return };
        for f in table.fields().iter() {
            let Field::NameKey { key, value, .. } = f else {
                continue;
            };
            if text(key) != "delegate_to" {
                continue;
            }
            let Some((s, tok)) = literal(value) else {
                continue;
            };
            let checked = if function == "goroutine.pool_create" {
                inv.resolve(&s).map(|_| ()).map_err(|e| e.to_string())
            } else {
                inv.resolve_one(&s).map(|_| ()).map_err(|e| e.to_string())
            };
            if let Err(e) = checked {
                self.report(
                    line(tok),
                    Level::Error,
                    format!("{function}: delegate_to: {e}"),
                );
            }
        }
    }

    /// An assignment target: in a task body, a change to what the task captured
    /// stays on the host.
    fn assigned(&mut self, v: &Var) {
        let Some(&task) = self.tasks.first() else {
            if let Var::Expression(e) = v {
                self.assignment_target_parts(e);
            }
            return;
        };
        let (name, tok, into_table) = match v {
            Var::Name(n) => (text(n), n, false),
            Var::Expression(e) => {
                self.assignment_target_parts(e);
                match e.prefix() {
                    Prefix::Name(n) => (text(n), n, true),
                    _ => return,
                }
            }
            _ => return,
        };
        let captured = match self.resolve(&name) {
            Some(d) => d < task,
            // A global assigned into (`results[k] = v`) is the script's, copied.
            None => into_table && !matches!(name.as_str(), "host" | "_G" | "_ENV"),
        };
        if captured {
            let what = if into_table {
                format!("into '{name}'")
            } else {
                format!("to '{name}'")
            };
            self.report(
                line(tok),
                Level::Warning,
                format!(
                    "a task assigns {what}, which it captured: the task runs on a copy, so \
                     the change stays on the host; return values instead"
                ),
            );
        }
    }

    /// Walk the expressions inside an assignment target (`t[f(x)] = v`).
    fn assignment_target_parts(&mut self, e: &full_moon::ast::VarExpression) {
        if let Prefix::Expression(p) = e.prefix() {
            self.expr(p);
        }
        for s in e.suffixes() {
            match s {
                Suffix::Index(Index::Brackets { expression, .. }) => self.expr(expression),
                Suffix::Call(Call::AnonymousCall(a)) => self.args(a, false),
                Suffix::Call(Call::MethodCall(m)) => self.args(m.args(), false),
                _ => {}
            }
        }
    }
}

/// `.name` or `["name"]` or `:name`: the member a suffix names, and its token.
fn member(s: &Suffix) -> Option<(String, &TokenReference)> {
    match s {
        Suffix::Index(Index::Dot { name, .. }) => Some((text(name), name)),
        Suffix::Index(Index::Brackets {
            expression: Expression::String(t),
            ..
        }) => string_literal(t).map(|s| (s, t)),
        Suffix::Call(Call::MethodCall(m)) => Some((text(m.name()), m.name())),
        _ => None,
    }
}

/// The line an expression starts on.
fn first_line(e: &Expression) -> usize {
    use full_moon::node::Node;
    e.start_position().map(|p| p.line()).unwrap_or(1)
}
