//! Endpoint names for reports: the method and the path with ids collapsed, so `GET /api/items/7` and
//! `GET /api/items/8` are counted together as `GET /api/items/{id}`.

/// `GET /api/items/7?full=1` -> `GET /api/items/{id}`.
pub fn endpoint_of(method: &str, target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    // An absolute-form target (a request to a proxy) names the server first; only the path counts.
    let path = match path.split_once("://") {
        Some((_, rest)) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => path,
    };
    let collapsed: Vec<&str> = path.split('/').map(|seg| if looks_like_id(seg) { "{id}" } else { seg }).collect();
    let path = collapsed.join("/");
    format!("{} {}", method, if path.is_empty() { "/" } else { &path })
}

/// Whether a path segment is an identifier rather than a name: a number, a UUID, a long hexadecimal
/// string, or a long token mixing letters and digits.
fn looks_like_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    if digits == seg.len() {
        return true;
    }
    if is_uuid(seg) {
        return true;
    }
    let hex = seg.bytes().all(|b| b.is_ascii_hexdigit());
    if hex && seg.len() >= 8 && digits > 0 {
        return true;
    }
    // Tokens and slugs with ids in them (`a1b2c3d4e5f6g7h8`, `user_12345678`); names have few digits.
    let token = seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    token && seg.len() >= 16 && digits * 4 >= seg.len()
}

fn is_uuid(seg: &str) -> bool {
    let groups: Vec<&str> = seg.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_collapsed_and_names_kept() {
        assert_eq!(endpoint_of("GET", "/api/items/7?full=1"), "GET /api/items/{id}");
        assert_eq!(endpoint_of("GET", "/"), "GET /");
        assert_eq!(endpoint_of("GET", ""), "GET /");
        assert_eq!(endpoint_of("DELETE", "/users/42/orders/1001"), "DELETE /users/{id}/orders/{id}");
        assert_eq!(endpoint_of("GET", "/u/123e4567-e89b-12d3-a456-426614174000"), "GET /u/{id}");
        assert_eq!(endpoint_of("GET", "/commits/9fceb02d0ae598e95dc970b74767f19372d61af8"), "GET /commits/{id}");
        assert_eq!(endpoint_of("GET", "/api/v2/health"), "GET /api/v2/health");
        assert_eq!(endpoint_of("GET", "/files/deadbeef"), "GET /files/deadbeef"); // a word, not an id
        assert_eq!(endpoint_of("GET", "/s/a1b2c3d4e5f6g7h8"), "GET /s/{id}");
        assert_eq!(endpoint_of("GET", "/api/items/"), "GET /api/items/");
        assert_eq!(endpoint_of("GET", "http://example.com/a/12"), "GET /a/{id}");
    }
}
