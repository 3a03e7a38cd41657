//! Newest-first pages with a `before` cursor (an item id), shared by the listings that page
//! that way (maintenance records, the mail outbox, reports): one reading of `limit` and
//! `before`, one way to say there is more.

use serde_json::json;

use crate::ApiError;

/// A query parameter that cannot mean anything: 400 naming it.
pub fn invalid_query(field: &'static str, message: String) -> ApiError {
    ApiError::bad_request("invalid_query", message).with_details(json!({ "field": field }))
}

/// What a request asks for: at most `limit` items older than `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: usize,
    pub before: Option<uuid::Uuid>,
}

impl Page {
    /// Reads `limit` (default `default`, 1 to `max`) and `before` (an id, when given).
    pub fn of(
        limit: Option<usize>,
        before: Option<&str>,
        default: usize,
        max: usize,
    ) -> Result<Page, ApiError> {
        let limit = limit.unwrap_or(default);
        if !(1..=max).contains(&limit) {
            return Err(invalid_query("limit", format!("limit is 1 to {max}")));
        }
        let before = before
            .map(|raw| {
                raw.parse::<uuid::Uuid>()
                    .map_err(|_| invalid_query("before", format!("{raw:?} is not an id")))
            })
            .transpose()?;
        Ok(Page { limit, before })
    }

    /// How many to ask the store for: one more than shown, to know whether there is more.
    pub fn fetch(&self) -> usize {
        self.limit + 1
    }

    /// The items to show and the `before` of the next page (none at the end), from what the
    /// store answered for [`Page::fetch`].
    pub fn split<T>(
        &self,
        mut items: Vec<T>,
        id: impl Fn(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        let more = items.len() > self.limit;
        items.truncate(self.limit);
        let next = if more { items.last().map(id) } else { None };
        (items, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_reads_its_bounds_and_says_whether_there_is_more() {
        let page = Page::of(Some(2), None, 50, 500).unwrap();
        assert_eq!(page.fetch(), 3);
        assert_eq!(
            page.split(vec![1, 2, 3], |n| n.to_string()),
            (vec![1, 2], Some("2".into()))
        );
        assert_eq!(
            page.split(vec![1, 2], |n| n.to_string()),
            (vec![1, 2], None)
        );
        assert_eq!(Page::of(None, None, 50, 500).unwrap().limit, 50);
        for bad in [Some(0), Some(501)] {
            assert_eq!(
                Page::of(bad, None, 50, 500).unwrap_err().code,
                "invalid_query"
            );
        }
        assert_eq!(
            Page::of(None, Some("x"), 50, 500).unwrap_err().code,
            "invalid_query"
        );
    }
}
