//! Longest-prefix matching of E.164 numbers: how a number picks its route, its route's sender
//! and its price. One implementation, so they cannot disagree.

/// Entries keyed by a number prefix ("" matches every number).
#[derive(Debug, Clone)]
pub struct PrefixTable<T> {
    entries: Vec<(String, T)>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T> PrefixTable<T> {
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> Self {
        Self {
            entries: entries.into_iter().collect(),
        }
    }

    /// The entry of the longest prefix `number` starts with.
    pub fn get(&self, number: &str) -> Option<&T> {
        longest_match(&self.entries, |(prefix, _)| prefix, number).map(|(_, value)| value)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The item whose prefix (`prefix_of`) is the longest that `number` starts with; of equal
/// prefixes, the first listed.
pub fn longest_match<'a, T>(
    items: &'a [T],
    prefix_of: impl Fn(&T) -> &str,
    number: &str,
) -> Option<&'a T> {
    let mut best: Option<(&T, usize)> = None;
    for item in items {
        let prefix = prefix_of(item);
        if number.starts_with(prefix) && best.is_none_or(|(_, len)| prefix.len() > len) {
            best = Some((item, prefix.len()));
        }
    }
    best.map(|(item, _)| item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_matching_prefix_wins_whatever_the_order() {
        let table = PrefixTable::new([
            (String::new(), "default"),
            ("+61".to_string(), "australia"),
            ("+614".to_string(), "australian mobiles"),
            ("+1".to_string(), "nanp"),
        ]);
        assert_eq!(table.get("+61412345678"), Some(&"australian mobiles"));
        assert_eq!(table.get("+61212345678"), Some(&"australia"));
        assert_eq!(table.get("+442071234567"), Some(&"default"));
        let no_default = PrefixTable::new([("+1".to_string(), 1)]);
        assert_eq!(no_default.get("+44"), None);
    }

    #[test]
    fn of_equal_prefixes_the_first_listed_wins() {
        let items = [("+1", 'a'), ("+1", 'b')];
        assert_eq!(
            longest_match(&items, |(p, _)| p, "+15551234567").map(|(_, v)| *v),
            Some('a')
        );
    }
}
