//! The `channel_index` table's codec: a row holds the positions of a run of consecutive
//! seqs of one channel, as big-endian 64-bit integers. Written by [`super::channel_index`],
//! read by it and by the history queries ([`super::queries`]).

use diesel::QueryResult;

/// The most seqs one row of the table holds; readers look for the row holding a seq among
/// those that begin at most this far before it.
pub const RUN_MAX: usize = 256;
/// Where one message of a channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Its seq in the channel.
    pub seq: i64,
    /// Its position in `messages`.
    pub pos: i64,
}

/// The positions of `places` as `channel_index.positions` holds them.
pub fn encode_positions(places: &[Place]) -> Vec<u8> {
    places.iter().flat_map(|p| p.pos.to_be_bytes()).collect()
}

/// The places of one `channel_index` row, checked against its seqs.
pub fn decode_positions(
    first_seq: i64,
    last_seq: i64,
    positions: &[u8],
) -> QueryResult<impl DoubleEndedIterator<Item = Place> + '_> {
    let count = last_seq.checked_sub(first_seq).map(|d| d.saturating_add(1));
    if count != i64::try_from(positions.len() / 8).ok() || !positions.len().is_multiple_of(8) {
        return Err(diesel::result::Error::DeserializationError(
            format!(
                "channel_index row at seq {first_seq}..={last_seq} holds {} bytes of positions",
                positions.len()
            )
            .into(),
        ));
    }
    Ok(positions.chunks_exact(8).enumerate().map(move |(i, b)| {
        let mut be = [0u8; 8];
        be.copy_from_slice(b);
        Place {
            seq: first_seq + i as i64,
            pos: i64::from_be_bytes(be),
        }
    }))
}

/// Places at `seqs`, each at ten times its seq (for tests).
#[cfg(test)]
pub(crate) fn places(seqs: &[i64]) -> Vec<Place> {
    seqs.iter()
        .map(|&seq| Place { seq, pos: seq * 10 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_their_encoding_and_are_checked_against_the_seqs() {
        let p = places(&[7, 8, 9]);
        let bytes = encode_positions(&p);
        assert_eq!(bytes.len(), 24);
        assert_eq!(&bytes[..8], &70_i64.to_be_bytes());
        let back: Vec<Place> = decode_positions(7, 9, &bytes).expect("decode").collect();
        assert_eq!(back, p);
        assert!(
            decode_positions(7, 10, &bytes).is_err(),
            "a seq without a position"
        );
        assert!(
            decode_positions(7, 9, &bytes[..23]).is_err(),
            "a torn position"
        );
        assert!(decode_positions(9, 7, &bytes).is_err(), "seqs backwards");
    }
}
