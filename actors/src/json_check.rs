//! Checks JSON that is valid but would break the clients it is handed to (contract
//! section 8): nesting deeper than `limits.max_json_depth`, numbers outside the double
//! range, and `\u` escapes of lone UTF-16 surrogates.
//!
//! Payloads are kept and served as sent, so what a common parser refuses (Python's
//! `json.loads` recurses once per level; JavaScript turns `1e999` into `Infinity`, which it
//! cannot write back; strict UTF-8 decoders reject a lone surrogate) would otherwise reach
//! every reader of a channel, in live deliveries and in history pages. One pass over the
//! bytes, with no allocation.

/// What makes a JSON text unfit to store and serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonFault {
    /// Arrays and objects nested deeper than the limit.
    #[error("nested deeper than {0} levels")]
    TooDeep(usize),
    /// A number that is infinite as a double.
    #[error("a number outside the range of a double")]
    NumberOutOfRange,
    /// A `\u` escape of a surrogate that is not half of a pair.
    #[error("a lone UTF-16 surrogate in a string")]
    LoneSurrogate,
}

/// Checks `text`, a JSON value that has already been parsed as valid JSON, for the faults
/// of [`JsonFault`]. `max_depth` counts arrays and objects: `{"a":[1]}` is 2 deep. Text
/// that is not valid JSON gets an answer too, without panicking, but not a meaningful one.
pub fn check_json(text: &str, max_depth: usize) -> Result<(), JsonFault> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(JsonFault::TooDeep(max_depth));
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => i = skip_string(b, i + 1)?,
            b'-' | b'0'..=b'9' => i = check_number(text, i)?,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Skips the string whose contents start at `i`; returns the index after its closing quote.
fn skip_string(b: &[u8], mut i: usize) -> Result<usize, JsonFault> {
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => return Ok(i + 1),
            b'\\' if b.get(i + 1) == Some(&b'u') => {
                let unit = hex4(b, i + 2);
                i += 6;
                match unit {
                    Some(0xD800..=0xDBFF) => {
                        // A high surrogate must be followed at once by a low one.
                        let low = (b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u'))
                            .then(|| hex4(b, i + 2))
                            .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Err(JsonFault::LoneSurrogate);
                        }
                        i += 6;
                    }
                    Some(0xDC00..=0xDFFF) => return Err(JsonFault::LoneSurrogate),
                    _ => {}
                }
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

/// The four hex digits at `i`, as a UTF-16 code unit.
fn hex4(b: &[u8], i: usize) -> Option<u16> {
    let digits = std::str::from_utf8(b.get(i..i + 4)?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

/// Checks the number starting at `i`; returns the index after it. Only a number with an
/// exponent or with more digits than a double's range can hold is parsed.
fn check_number(text: &str, i: usize) -> Result<usize, JsonFault> {
    let b = text.as_bytes();
    let mut end = i;
    let mut exponent = false;
    while let Some(&c) = b.get(end) {
        match c {
            b'0'..=b'9' | b'-' | b'+' | b'.' => {}
            b'e' | b'E' => exponent = true,
            _ => break,
        }
        end += 1;
    }
    // f64::MAX has 309 integer digits; anything shorter without an exponent is finite.
    if exponent || end - i > 300 {
        let finite = text
            .get(i..end)
            .and_then(|n| n.parse::<f64>().ok())
            .is_none_or(f64::is_finite);
        if !finite {
            return Err(JsonFault::NumberOutOfRange);
        }
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_counted_in_arrays_and_objects_outside_strings() {
        assert_eq!(check_json(r#"{"content":"hi"}"#, 1), Ok(()));
        assert_eq!(check_json(r#"{"a":[1]}"#, 1), Err(JsonFault::TooDeep(1)));
        assert_eq!(check_json(r#"{"a":[1]}"#, 2), Ok(()));
        assert_eq!(check_json(r#"{"a":"[[[[[[{{{{"}"#, 1), Ok(()));
        assert_eq!(check_json(r#"[{},[],{"a":[]}]"#, 3), Ok(()));
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert_eq!(check_json(&deep, 32), Err(JsonFault::TooDeep(32)));
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert_eq!(check_json(&ok, 32), Ok(()));
        // Escaped quotes do not end a string early.
        assert_eq!(check_json(r#"{"a":"x\"[[[","b":1}"#, 1), Ok(()));
    }

    #[test]
    fn numbers_beyond_a_double_are_refused() {
        for bad in ["1e999999", "-1E400", "[2e308]", &"9".repeat(400)] {
            assert_eq!(
                check_json(bad, 32),
                Err(JsonFault::NumberOutOfRange),
                "{bad}"
            );
        }
        for good in [
            "1e308",
            "-1.5e-999",
            "12345678901234567890123",
            "0",
            "-0.5",
            "1E+2",
        ] {
            assert_eq!(check_json(good, 32), Ok(()), "{good}");
        }
    }

    #[test]
    fn lone_surrogates_are_refused_and_pairs_kept() {
        for bad in [
            r#""\ud800""#,
            r#""\uDBFF x""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#"{"k\ud800":1}"#,
            r#""\ud800\ud800""#,
        ] {
            assert_eq!(check_json(bad, 32), Err(JsonFault::LoneSurrogate), "{bad}");
        }
        for good in [
            r#""\ud83d\ude00""#,
            r#""\u00e9\u0000""#,
            r#""\\ud800""#,
            r#""😀""#,
        ] {
            assert_eq!(check_json(good, 32), Ok(()), "{good}");
        }
    }

    #[test]
    fn anything_at_all_gets_an_answer() {
        for junk in [
            "",
            "\"",
            "\\",
            "\"\\u",
            "\"\\ud800\\u",
            "1e",
            "-",
            "{{{",
            "]]]",
            "\"\\u12",
        ] {
            let _ = check_json(junk, 4);
        }
    }
}
