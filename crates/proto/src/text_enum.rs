//! Enums that are also stored as text (database columns, JSON columns, event fields).

/// A stored word that names no variant of the enum it should be: bad data, reported with both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {text:?}")]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub text: String,
}

/// Gives a fieldless enum its text form: `as_str`, `ALL`, `Display` and `FromStr`, with the same
/// snake_case words serde uses on the wire (a unit test per enum checks the two agree).
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::text_enum::UnknownVariant;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::text_enum::UnknownVariant {
                        kind: stringify!($name),
                        text: other.to_string(),
                    }),
                }
            }
        }
    };
}

pub(crate) use text_enum;

/// Checks that every variant's text is what serde writes and that it parses back.
#[cfg(test)]
pub(crate) fn assert_text_matches_serde<T>(all: &[T])
where
    T: serde::Serialize
        + std::str::FromStr
        + std::fmt::Display
        + PartialEq
        + std::fmt::Debug
        + Copy,
    <T as std::str::FromStr>::Err: std::fmt::Debug,
{
    for value in all {
        let json = serde_json::to_string(value).expect("serializes");
        assert_eq!(json, format!("\"{value}\""), "serde and Display disagree");
        assert_eq!(value.to_string().parse::<T>().expect("parses back"), *value);
    }
}
