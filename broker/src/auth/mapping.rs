//! `ssl.principal.mapping.rules`: Kafka's rules that turn a client
//! certificate's subject (an RFC 2253 distinguished name such as
//! `CN=alice,OU=ops,O=org-a`) into a principal name.
//!
//! The syntax is Kafka's: a comma-separated list of `DEFAULT` and
//! `RULE:pattern/replacement/` entries, optionally ending in `L` or `U`
//! (lower or upper case the result); `\/` stands for a slash inside the
//! pattern or replacement, and `$1` for a capture group. The first rule
//! whose pattern matches the whole name decides; `DEFAULT` keeps the name as
//! it is; no match keeps it too (as Kafka does).

use regex::Regex;

/// Longest rules setting accepted, and most rules in it.
const RULES_BYTES_MAX: usize = 16 * 1024;
const RULES_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("ssl.principal.mapping.rules: cannot parse {0:?} (expected DEFAULT or RULE:pattern/replacement/[LU])")]
    Syntax(String),
    #[error("ssl.principal.mapping.rules: bad pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("ssl.principal.mapping.rules is too long")]
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

#[derive(Debug, Clone)]
enum Rule {
    Default,
    Replace {
        pattern: Regex,
        replacement: String,
        case: Case,
    },
}

/// Parsed mapping rules.
#[derive(Debug, Clone)]
pub struct PrincipalMapping {
    rules: Vec<Rule>,
}

impl Default for PrincipalMapping {
    fn default() -> Self {
        Self {
            rules: vec![Rule::Default],
        }
    }
}

/// Splits off one `/`-terminated field, undoing `\/`.
fn field(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if s[i + 1..].starts_with('/') => {
                out.push('/');
                chars.next();
            }
            '/' => return Some((out, &s[i + 1..])),
            c => out.push(c),
        }
    }
    None
}

/// Kafka's `$1` group references become `${1}` so that a digit or letter
/// right after one is not read as part of the group's name.
fn replacement_groups(r: &str) -> String {
    let mut out = String::with_capacity(r.len());
    let mut chars = r.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            let mut n = String::new();
            // Java reads one digit, more only while the group exists;
            // Courier reads one, which covers groups 1 to 9.
            if let Some(d) = chars.next() {
                n.push(d);
            }
            out.push_str(&format!("${{{n}}}"));
        } else if c == '$' {
            out.push_str("$$");
        } else {
            out.push(c);
        }
    }
    out
}

impl PrincipalMapping {
    pub fn parse(rules: &str) -> Result<Self, MappingError> {
        if rules.len() > RULES_BYTES_MAX {
            return Err(MappingError::TooLong);
        }
        let mut out = Vec::new();
        let mut rest = rules.trim();
        while !rest.is_empty() {
            if out.len() >= RULES_MAX {
                return Err(MappingError::TooLong);
            }
            if let Some(after) = rest.strip_prefix("DEFAULT") {
                out.push(Rule::Default);
                rest = after;
            } else if let Some(after) = rest.strip_prefix("RULE:") {
                let bad = || MappingError::Syntax(rest.to_owned());
                let (pattern, after) = field(after).ok_or_else(bad)?;
                let (replacement, after) = field(after).ok_or_else(bad)?;
                let (case, after) = match after.chars().next() {
                    Some('L') => (Case::Lower, &after[1..]),
                    Some('U') => (Case::Upper, &after[1..]),
                    _ => (Case::Keep, after),
                };
                let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| MappingError::Pattern {
                    pattern: pattern.clone(),
                    reason: e.to_string(),
                })?;
                out.push(Rule::Replace {
                    pattern: regex,
                    replacement: replacement_groups(&replacement),
                    case,
                });
                rest = after;
            } else {
                return Err(MappingError::Syntax(rest.to_owned()));
            }
            rest = rest.trim_start();
            match rest.strip_prefix(',') {
                Some(after) => rest = after.trim_start(),
                None if rest.is_empty() => {}
                None => return Err(MappingError::Syntax(rest.to_owned())),
            }
        }
        if out.is_empty() {
            out.push(Rule::Default);
        }
        Ok(Self { rules: out })
    }

    /// The principal name for distinguished name `dn`.
    pub fn apply(&self, dn: &str) -> String {
        for rule in &self.rules {
            match rule {
                Rule::Default => return dn.to_owned(),
                Rule::Replace {
                    pattern,
                    replacement,
                    case,
                } => {
                    if pattern.is_match(dn) {
                        let mapped = pattern.replace(dn, replacement.as_str()).into_owned();
                        return match case {
                            Case::Keep => mapped,
                            Case::Lower => mapped.to_lowercase(),
                            Case::Upper => mapped.to_uppercase(),
                        };
                    }
                }
            }
        }
        dn.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kafka_documentation_examples_map_as_documented() {
        let m = PrincipalMapping::parse(
            "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/,RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L,\
             RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L,DEFAULT",
        )
        .unwrap();
        assert_eq!(m.apply("CN=kafka-admin,OU=ServiceUsers,O=Unknown"), "kafka-admin");
        assert_eq!(
            m.apply("CN=Adminstrator,OU=Admin,O=Unknown,L=Unknown,ST=Unknown,C=Unknown"),
            "adminstrator@admin"
        );
        assert_eq!(m.apply("cn=Bob.Smith,dc=example"), "bob.smith");
        assert_eq!(m.apply("O=x"), "O=x");
    }

    #[test]
    fn default_and_escapes_and_bad_rules() {
        assert_eq!(
            PrincipalMapping::parse("DEFAULT").unwrap().apply("CN=a,O=b"),
            "CN=a,O=b"
        );
        assert_eq!(PrincipalMapping::parse("").unwrap().apply("CN=a"), "CN=a");
        let m = PrincipalMapping::parse(r"RULE:^CN=([^,]*),O=(.*)$/$2\/$1/U").unwrap();
        assert_eq!(m.apply("CN=alice,O=org-a"), "ORG-A/ALICE");
        let m = PrincipalMapping::parse("RULE:^CN=([^,]*).*$/$1_x/").unwrap();
        assert_eq!(m.apply("CN=alice,O=org-a"), "alice_x");
        assert!(PrincipalMapping::parse("RULE:^(/x").is_err());
        assert!(PrincipalMapping::parse("RULE:([/x/").is_err());
        assert!(PrincipalMapping::parse("NOPE").is_err());
    }

    proptest! {
        #[test]
        fn any_rules_and_names_parse_or_fail_without_panic(rules in "[ -~]{0,80}", dn in "[ -~]{0,60}") {
            if let Ok(m) = PrincipalMapping::parse(&rules) {
                let _ = m.apply(&dn);
            }
        }

        #[test]
        fn rule_shaped_input_never_panics(p in "[\\^$.*()a-zA-Z=,\\\\/]{0,20}", r in "[$0-9a-z/\\\\]{0,10}", c in "[LUx]?") {
            if let Ok(m) = PrincipalMapping::parse(&format!("RULE:{p}/{r}/{c},DEFAULT")) {
                let _ = m.apply("CN=a,O=b");
            }
        }
    }
}
