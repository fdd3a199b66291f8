//! The search-box query syntax, parsed once here so the CLI, the router and
//! the node agree on what a query means and reject a malformed one with the
//! same message, pointing at the character where it went wrong.
//!
//! | syntax            | meaning                                                  |
//! |-------------------|----------------------------------------------------------|
//! | `deploy runbook`  | either word (BM25 over title and body; the default)      |
//! | `"error budget"`  | the words next to each other, in this order              |
//! | `-draft`          | no document containing the word (or `-"a phrase"`)       |
//! | `+deploy`         | the word is required                                     |
//! | `a AND b`         | both sides required (`AND` binds the clause on each side)|
//! | `a OR b`          | either side (the default, spelled out)                   |
//! | `depl*`           | a word starting with `depl` (also `"error bud"*`)        |
//! | `title:deploy`    | in the title only (also `body:`, and `title:"a b"`)      |
//!
//! `AND` and `OR` are operators only in capitals, and only in a query that
//! is not all capitals (a shouted title, "DESIGN AND TEST OF ...", is plain
//! text); there are no parentheses.
//! Text that uses none of this (a pasted paragraph or error message) is
//! "plain" and is searched exactly as before the syntax existed: other
//! punctuation is not an error, and `word:word` outside `title:`/`body:` is
//! two words.

use thiserror::Error;

/// A query that is not well formed. `at` counts characters from 1, so a UI
/// can put a caret under the culprit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("query syntax error at character {at}: {message}")]
pub struct QuerySyntaxError {
    /// 1-based character position of the problem.
    pub at: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// How a clause combines with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occur {
    /// Optional: a match adds to the score (the default).
    Should,
    /// Required (`+word`, or next to `AND`).
    Must,
    /// Excluded (`-word`).
    MustNot,
}

/// Which text field a clause searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Title and body (the default).
    Both,
    /// `title:`.
    Title,
    /// `body:`.
    Body,
}

/// What a clause matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Atom {
    /// One word, analysed like the indexed text (it may still split in two,
    /// as `e-mail` does).
    Word(String),
    /// Words next to each other, in order.
    Phrase(String),
    /// A word starting with this text (lowercased, not stemmed).
    Prefix(String),
    /// A phrase whose last word is a prefix.
    PhrasePrefix(String),
}

/// One clause of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// Whether the clause is optional, required or excluded.
    pub occur: Occur,
    /// The field(s) it searches.
    pub scope: Scope,
    /// What it matches.
    pub atom: Atom,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuery {
    /// The clauses, in the order written.
    pub clauses: Vec<Clause>,
    /// No syntax was used: the query is a bag of words and is searched the
    /// way plain text always was, so its scores do not change.
    pub plain: bool,
}

/// Parses `text`. Never fails on plain text.
pub fn parse(text: &str) -> Result<ParsedQuery, QuerySyntaxError> {
    let chars: Vec<char> = text.chars().collect();
    let mut parser = Parser {
        chars: &chars,
        pos: 0,
        plain: true,
        operators: text.chars().any(char::is_lowercase),
    };
    let items = parser.items()?;
    let clauses = bind_operators(items)?;
    Ok(ParsedQuery {
        plain: parser.plain,
        clauses,
    })
}

/// A clause or an operator, as read, with its 0-based character position.
enum Item {
    Clause(Clause),
    And(usize),
    Or(usize),
}

struct Parser<'a> {
    chars: &'a [char],
    pos: usize,
    plain: bool,
    /// Whether capital `AND`/`OR` are operators (the text is not all capitals).
    operators: bool,
}

impl Parser<'_> {
    fn items(&mut self) -> Result<Vec<Item>, QuerySyntaxError> {
        let mut items = Vec::new();
        loop {
            while self.peek().is_some_and(char::is_whitespace) {
                self.pos += 1;
            }
            if self.peek().is_none() {
                return Ok(items);
            }
            if let Some(item) = self.item()? {
                items.push(item);
            }
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    /// Whether a sign before `c` is an operator: only right before a word
    /// or a quote, so pasted `--release` or `a - b` stay plain text.
    fn starts_clause(c: Option<char>) -> bool {
        c.is_some_and(|c| c.is_alphanumeric() || c == '"')
    }

    /// One clause or operator starting at a non-space character; `None`
    /// for a run of punctuation that searches nothing.
    fn item(&mut self) -> Result<Option<Item>, QuerySyntaxError> {
        let start = self.pos;
        let occur = match self.peek() {
            Some('-') if Self::starts_clause(self.peek_at(1)) => Occur::MustNot,
            Some('+') if Self::starts_clause(self.peek_at(1)) => Occur::Must,
            _ => Occur::Should,
        };
        if occur != Occur::Should {
            self.pos += 1;
        }
        let scope = self.scope();
        if self.peek() == Some('"') {
            let atom = self.phrase()?;
            self.plain = false;
            return Ok(Some(Item::Clause(Clause { occur, scope, atom })));
        }
        let word_start = self.pos;
        while self.peek().is_some_and(|c| !c.is_whitespace() && c != '"') {
            self.pos += 1;
        }
        let word: String = self.chars[word_start..self.pos].iter().collect();
        if occur == Occur::Should && scope == Scope::Both && self.operators {
            match word.as_str() {
                "AND" => {
                    self.plain = false;
                    return Ok(Some(Item::And(start)));
                }
                "OR" => {
                    self.plain = false;
                    return Ok(Some(Item::Or(start)));
                }
                _ => {}
            }
        }
        let atom = match word.strip_suffix('*') {
            Some(stem) if has_text(stem) => Atom::Prefix(stem.to_lowercase()),
            _ if !has_text(&word) => {
                // Punctuation alone ("foo - bar", "* * *"): nothing to search,
                // and a sign or scope on it is a mistake worth reporting.
                if occur != Occur::Should || scope != Scope::Both {
                    return Err(error(start, "an operator needs a word after it"));
                }
                return Ok(None);
            }
            _ => Atom::Word(word),
        };
        if occur != Occur::Should || scope != Scope::Both || !matches!(atom, Atom::Word(_)) {
            self.plain = false;
        }
        Ok(Some(Item::Clause(Clause { occur, scope, atom })))
    }

    /// `title:` or `body:` (any case) right before a word or phrase at the
    /// cursor, consumed. Followed by a space (pasted "Title: ...") it is a
    /// plain word.
    fn scope(&mut self) -> Scope {
        for (name, scope) in [("title:", Scope::Title), ("body:", Scope::Body)] {
            let n = name.chars().count();
            let here: String = self.chars[self.pos..].iter().take(n).collect();
            let next = self.peek_at(n);
            if here.eq_ignore_ascii_case(name) && next.is_some_and(|c| !c.is_whitespace()) {
                self.pos += n;
                return scope;
            }
        }
        Scope::Both
    }

    /// A quoted phrase at the cursor (on its opening quote), with an
    /// optional `*` after the closing quote.
    fn phrase(&mut self) -> Result<Atom, QuerySyntaxError> {
        let open = self.pos;
        self.pos += 1;
        let body_start = self.pos;
        while self.peek().is_some_and(|c| c != '"') {
            self.pos += 1;
        }
        if self.peek().is_none() {
            return Err(error(
                open,
                "this quote is never closed; add the closing \" (or remove it)",
            ));
        }
        let phrase: String = self.chars[body_start..self.pos].iter().collect();
        self.pos += 1;
        if !has_text(&phrase) {
            return Err(error(open, "an empty phrase searches nothing"));
        }
        if self.peek() == Some('*') {
            self.pos += 1;
            return Ok(Atom::PhrasePrefix(phrase.to_lowercase()));
        }
        Ok(Atom::Phrase(phrase))
    }
}

/// Whether `s` holds anything the analyser indexes.
fn has_text(s: &str) -> bool {
    s.chars().any(char::is_alphanumeric)
}

fn error(pos: usize, message: &str) -> QuerySyntaxError {
    QuerySyntaxError {
        at: pos + 1,
        message: message.to_string(),
    }
}

/// Turns `AND`/`OR` into the occurs of the clauses around them: a clause
/// next to an `AND` is required (unless excluded). An operator needs a
/// clause on each side.
fn bind_operators(items: Vec<Item>) -> Result<Vec<Clause>, QuerySyntaxError> {
    let mut clauses: Vec<Clause> = Vec::new();
    let mut pending: Option<(bool, usize)> = None; // (is AND, position)
    let name = |and: bool| if and { "AND" } else { "OR" };
    for item in items {
        match item {
            Item::And(at) | Item::Or(at) => {
                let and = matches!(item, Item::And(_));
                if let Some((prev, _)) = pending {
                    return Err(error(
                        at,
                        &format!(
                            "{} right after {}: put a word between them",
                            name(and),
                            name(prev)
                        ),
                    ));
                }
                if clauses.is_empty() {
                    return Err(error(
                        at,
                        &format!(
                            "{} needs a word before it (write it in lowercase to search for it)",
                            name(and)
                        ),
                    ));
                }
                pending = Some((and, at));
            }
            Item::Clause(mut clause) => {
                if let Some((true, _)) = pending {
                    if let Some(prev) = clauses.last_mut() {
                        require(prev);
                    }
                    require(&mut clause);
                }
                pending = None;
                clauses.push(clause);
            }
        }
    }
    if let Some((and, at)) = pending {
        return Err(error(
            at,
            &format!(
                "{} needs a word after it (write it in lowercase to search for it)",
                name(and)
            ),
        ));
    }
    Ok(clauses)
}

fn require(clause: &mut Clause) {
    if clause.occur == Occur::Should {
        clause.occur = Occur::Must;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clause(occur: Occur, scope: Scope, atom: Atom) -> Clause {
        Clause { occur, scope, atom }
    }

    fn word(w: &str) -> Atom {
        Atom::Word(w.into())
    }

    #[test]
    fn plain_text_is_plain_whatever_its_punctuation() {
        for text in [
            "deploy runbook",
            "error: connection refused (os error 111) - retrying",
            "e-mail and or not",
            "cargo build --release -- x",
            "Title: Runbook body: text",
            "* * * C++ x=1 ^2 [a] {b} ~c !",
            "",
        ] {
            let q = parse(text).expect(text);
            assert!(q.plain, "{text:?} is plain");
            assert!(q.clauses.iter().all(|c| c.occur == Occur::Should
                && c.scope == Scope::Both
                && matches!(c.atom, Atom::Word(_))));
        }
    }

    #[test]
    fn each_operator_is_read() {
        let q =
            parse(r#"-draft +deploy "error budget" depl* title:runbook body:"on call" "err bud"*"#)
                .expect("parses");
        assert!(!q.plain);
        assert_eq!(
            q.clauses,
            vec![
                clause(Occur::MustNot, Scope::Both, word("draft")),
                clause(Occur::Must, Scope::Both, word("deploy")),
                clause(
                    Occur::Should,
                    Scope::Both,
                    Atom::Phrase("error budget".into())
                ),
                clause(Occur::Should, Scope::Both, Atom::Prefix("depl".into())),
                clause(Occur::Should, Scope::Title, word("runbook")),
                clause(Occur::Should, Scope::Body, Atom::Phrase("on call".into())),
                clause(
                    Occur::Should,
                    Scope::Both,
                    Atom::PhrasePrefix("err bud".into())
                ),
            ]
        );
    }

    #[test]
    fn and_binds_its_neighbours_and_or_is_the_default() {
        let q = parse("a b AND c OR d -e AND f").expect("parses");
        let occurs: Vec<Occur> = q.clauses.iter().map(|c| c.occur).collect();
        assert_eq!(
            occurs,
            vec![
                Occur::Should,
                Occur::Must,
                Occur::Must,
                Occur::Should,
                Occur::MustNot,
                Occur::Must
            ]
        );
        assert!(!q.plain, "AND is syntax");
        let or = parse("a OR b").expect("parses");
        assert_eq!(or.clauses.len(), 2, "OR is not a word");
    }

    #[test]
    fn malformed_queries_point_at_the_culprit() {
        let cases = [
            (r#"deploy "error budget"#, 8, "never closed"),
            (r#"a "" b"#, 3, "empty phrase"),
            ("AND deploy", 1, "before it"),
            ("deploy OR", 8, "after it"),
            ("a AND OR b", 7, "right after AND"),
            ("title:- deploy", 1, "needs a word"),
            ("x -\"\" y", 4, "empty phrase"),
        ];
        for (text, at, says) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.at, at, "{text:?}: {e}");
            assert!(e.message.contains(says), "{text:?}: {e}");
            assert!(e.to_string().contains(&format!("character {at}")), "{e}");
        }
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        let e = parse("café \"unclosed").expect_err("unclosed");
        assert_eq!(e.at, 6);
    }

    #[test]
    fn a_query_in_capitals_has_no_operators() {
        let q = parse("DESIGN AND TEST OF FILTERS").expect("parses");
        assert!(q.plain);
        assert_eq!(q.clauses.len(), 5);
        assert!(!parse("design AND test").expect("parses").plain);
    }

    #[test]
    fn lowercase_operators_and_unknown_scopes_are_words() {
        let q = parse("and or status:open").expect("parses");
        assert!(q.plain);
        assert_eq!(
            q.clauses.iter().map(|c| c.atom.clone()).collect::<Vec<_>>(),
            vec![word("and"), word("or"), word("status:open")]
        );
    }
}
