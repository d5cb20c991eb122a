//! Request path normalization before the policy decides, so that `/v1/../admin`, `/admin//x` or
//! `/%61dmin` cannot slip past a rule on `/admin/**`: the policy sees, and the service receives,
//! the same normalized path.
//!
//! A `;` (raw or as `%3B`, either case) anywhere in the path is refused with 400. RFC 3986 lets
//! a segment carry parameters after `;`, and servers disagree about them: Tomcat and Spring drop
//! `;...` from each segment before resolving dot segments, so `/public/..;/admin` is `/admin` to
//! them while this normalizer sees a segment named `..;` under `/public/`, and an allow on
//! `/public/**` would let it through. Stripping parameters ourselves would only trade one
//! reading for another (Jetty, Express and others keep them), so the one safe answer is to
//! refuse them: path parameters are rare in APIs, and `;` in a query is not affected.

/// Why a path cannot be normalized; the request is refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not origin-form (`*`, an authority, or empty).
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`, `%5C` or `%00`: an encoded separator or NUL, which servers read differently.
    EncodedSeparator,
    /// A raw backslash, which some servers read as `/`.
    Backslash,
    /// `;` or `%3B`: a path parameter, which servers strip or keep differently.
    Semicolon,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            Self::NotAbsolute => "the request target must be an absolute path",
            Self::BadEscape => "the path has a '%' that is not followed by two hex digits",
            Self::EncodedSeparator => "the path has an encoded '/', '\\' or NUL (%2F, %5C, %00)",
            Self::Backslash => "the path has a backslash",
            Self::Semicolon => "the path has a ';' or %3B (path parameters are not accepted)",
        }
    }
}

/// RFC 3986 normalization of an origin-form path (no query): percent-encodings of unreserved
/// characters decoded and other encodings upper-cased (§6.2.2.1-2), dot segments removed
/// (§5.2.4), and runs of `/` merged into one. A trailing slash is kept.
pub fn normalize(path: &str) -> Result<String, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if rest.contains('\\') {
        return Err(PathError::Backslash);
    }
    if rest.contains(';') {
        return Err(PathError::Semicolon);
    }
    let decoded = decode_unreserved(rest)?;
    let segments: Vec<&str> = decoded.split('/').collect();
    let count = segments.len();
    let mut out: Vec<&str> = Vec::with_capacity(count);
    let mut trailing = false;
    for (i, segment) in segments.into_iter().enumerate() {
        let last = i + 1 == count;
        match segment {
            "" | "." => trailing = last,
            ".." => {
                out.pop();
                trailing = last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut normalized = String::with_capacity(decoded.len() + 1);
    normalized.push('/');
    normalized.push_str(&out.join("/"));
    if trailing && !out.is_empty() {
        normalized.push('/');
    }
    Ok(normalized)
}

fn decode_unreserved(input: &str) -> Result<String, PathError> {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).and_then(|c| hex_value(*c));
        let lo = bytes.get(i + 2).and_then(|c| hex_value(*c));
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(PathError::BadEscape);
        };
        let value = hi * 16 + lo;
        match value {
            b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
            b';' => return Err(PathError::Semicolon),
            v if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => out.push(char::from(v)),
            v => {
                out.push('%');
                out.push_str(&format!("{v:02X}"));
            }
        }
        i += 3;
    }
    Ok(out)
}

fn hex_value(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_rfc_3986() {
        let cases = [
            ("/", "/"),
            ("/v1/charges", "/v1/charges"),
            ("/admin/", "/admin/"),
            ("//admin//users", "/admin/users"),
            ("/v1/../admin", "/admin"),
            ("/v1/./charges/.", "/v1/charges/"),
            ("/../../x", "/x"),
            ("/a/b/..", "/a/"),
            ("/%61dmin/%7e", "/admin/~"),
            ("/%2e%2E/admin", "/admin"),
            ("/a%20b/%c3%a9", "/a%20b/%C3%A9"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), Ok(want.to_owned()), "{input}");
        }
    }

    #[test]
    fn refuses_what_servers_read_differently() {
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%00"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a\\..\\admin"), Err(PathError::Backslash));
    }

    #[test]
    fn refuses_path_parameters() {
        for path in [
            "/public/..;/admin",
            "/admin;x/users",
            "/a%3Bb",
            "/a%3bb",
            "/public/%2e%2e%3b/admin",
            "/x;",
        ] {
            assert_eq!(normalize(path), Err(PathError::Semicolon), "{path}");
        }
    }
}
