//! TOML into typed values, with errors that name the key an author must fix
//! (`controller[1].units[3]`, `gate[0].nmae`): the one loader behind profiles, fleet files,
//! farm files, scenarios and the runtime's configuration.

use serde::de::DeserializeOwned;

/// Where a TOML text went wrong: the key (`(file)` when it is the text as a whole) and what is
/// wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

/// Parses `text` as a `T`.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, KeyError> {
    let de = toml::Deserializer::parse(text).map_err(|e| KeyError {
        key: "(file)".into(),
        message: e.to_string(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        key_error(path, e.into_inner().message().to_string())
    })
}

/// Reads a `T` out of an already parsed TOML value (a configuration merged from a file and
/// the environment).
pub fn from_value<T: DeserializeOwned>(value: toml::Value) -> Result<T, KeyError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        key_error(path, e.into_inner().to_string())
    })
}

/// serde reports a missing key at its parent table; the key itself is what the author has to
/// add, so it is named.
fn key_error(path: String, message: String) -> KeyError {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'));
    let key = match (path.as_str(), missing) {
        (".", Some(field)) => field.to_string(),
        (".", None) => "(file)".to_string(),
        (_, Some(field)) => format!("{path}.{field}"),
        (_, None) => path,
    };
    KeyError { key, message }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct File {
        item: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        id: String,
        size: u8,
    }

    fn key(text: &str) -> String {
        parse::<File>(text).unwrap_err().key
    }

    #[test]
    fn errors_name_the_key_to_fix() {
        assert_eq!(key("[[item]]\nid = \"a\"\nsize = 300\n"), "item[0].size");
        assert_eq!(key("[[item]]\nid = \"a\"\n"), "item[0].size");
        assert_eq!(
            key("[[item]]\nid = \"a\"\nsize = 1\nsyze = 2\n"),
            "item[0].syze"
        );
        assert_eq!(key("item = ["), "(file)");
        assert_eq!(key(""), "item");
    }
}
