//! The simulated provider's embeddings: deterministic, with no model, yet close for texts that
//! share most of their words and far apart for texts that share few, so the semantic reply cache
//! can be tried and tested without a real embedding model. The mock provider (`chatq-mock-llm`)
//! answers `/v1/embeddings` with this same function.
//!
//! How: a bag of words. The text is lower-cased and cut into words at every character that is
//! not a letter or a digit; each word is hashed (FNV-1a, the same on every platform and build) to
//! one of [`DIMENSIONS`] coordinates and to a sign, and adds ±1 there; the vector is then scaled
//! to length 1. The cosine similarity of two texts is then about the share of their words they
//! have in common: "what is the capital of france" and "what is the capital city of france"
//! (six words of seven shared) come out at about 0.93; word order and punctuation do not count
//! at all; "what is the capital of spain" and "… of france" at about 0.83; unrelated texts
//! near 0. The signs keep words that land on the same coordinate from always adding up.

/// Length of every simulated embedding.
pub const DIMENSIONS: usize = 256;

/// The embedding of `text`: a unit vector of [`DIMENSIONS`] numbers.
pub fn embed(text: &str) -> Vec<f32> {
    let mut vector = vec![0.0_f32; DIMENSIONS];
    let lowered = text.to_lowercase();
    let mut words = lowered
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .peekable();
    if words.peek().is_none() {
        // No words at all: still a unit vector, the same for every such text.
        vector[0] = 1.0;
        return vector;
    }
    for word in words {
        let hash = fnv1a(word.as_bytes());
        let coordinate = usize::try_from(hash % DIMENSIONS as u64).unwrap_or(0);
        let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
        vector[coordinate] += sign;
    }
    let length = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    for x in &mut vector {
        *x /= length;
    }
    vector
}

/// 64-bit FNV-1a: a fixed hash, unlike the standard library's, which may change between builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &str, b: &str) -> f32 {
        embed(a).iter().zip(embed(b)).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn shared_words_make_close_embeddings_and_unrelated_ones_far() {
        let france = "What is the capital of France?";
        assert!((cosine(france, "what is the capital of france") - 1.0).abs() < 1e-5);
        let paraphrase = cosine(france, "What is the capital city of France?");
        assert!((0.9..0.95).contains(&paraphrase), "{paraphrase}");
        let other_country = cosine(france, "What is the capital of Spain?");
        assert!((0.75..0.9).contains(&other_country), "{other_country}");
        let unrelated = cosine(france, "how do queues keep every request safe");
        assert!(unrelated.abs() < 0.3, "{unrelated}");
        let length: f32 = embed("").iter().map(|x| x * x).sum();
        assert!((length - 1.0).abs() < 1e-5);
    }
}
