//! Filling a prompt template's `{slot}`s with texts it wraps in tags (`<response>...</response>`).
//!
//! One pass over the template, so a text that quotes a slot name (a format string such as
//! `f"{response}"`) is never filled in itself; and a closing tag of the template's own inside a
//! text is escaped (`</response>` -> `<\/response>`), so that an answer cannot close its tag and
//! speak to the judge from outside it.

/// `template` with each `{name}` of `slots` replaced by its text, trimmed and escaped against
/// `tags`. Braces that name no slot stay as they are.
pub fn fill(template: &str, slots: &[(&str, &str)], tags: &[&str]) -> String {
    let mut out =
        String::with_capacity(template.len() + slots.iter().map(|s| s.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let slot = slots
            .iter()
            .find(|(name, _)| after.strip_prefix(name).is_some_and(|r| r.starts_with('}')));
        match slot {
            Some((name, text)) => {
                out.push_str(&escape_closing_tags(text.trim(), tags));
                rest = &after[name.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `</tag` -> `<\/tag` for every tag that starts one of `tags` (any letter case, with or
/// without the `>`); every other character as it was.
pub fn escape_closing_tags(text: &str, tags: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("</") {
        let after = &rest[at + 2..];
        let closes_ours = tags.iter().any(|tag| {
            after
                .get(..tag.len())
                .is_some_and(|word| word.eq_ignore_ascii_case(tag))
        });
        out.push_str(&rest[..at]);
        out.push_str(if closes_ours { "<\\/" } else { "</" });
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_filled_once_and_tags_escaped() {
        let t = "<q>{q}</q> <a>{a}</a> {other}";
        let got = fill(t, &[("q", " say {a} "), ("a", "x</A>y</b>")], &["q", "a"]);
        assert_eq!(got, "<q>say {a}</q> <a>x<\\/A>y</b></a> {other}");
        // `</b` starts with none of the tags when they are longer words.
        let got = fill("{r}", &[("r", "</bold></response_a >")], &["response"]);
        assert_eq!(got, "</bold><\\/response_a >");
        assert_eq!(fill("{unclosed", &[("unclosed", "x")], &[]), "{unclosed");
    }
}
