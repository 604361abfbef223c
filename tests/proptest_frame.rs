//! Property tests of the frame codec: any sequence of frames, cut into pieces anywhere,
//! reassembles exactly; a length over the limit is refused as soon as its prefix is in,
//! wherever the prefix is cut and whatever came before it.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use xlreg::frame::{encode, FrameDecoder, FrameError, LENGTH_PREFIX_LEN, MAX_FRAME_LEN};

/// Feeds `wire` to `decoder` in pieces cut at `cuts` and collects every frame.
fn feed(
    decoder: &mut FrameDecoder,
    wire: &[u8],
    cuts: &[Index],
) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
    points.push(0);
    points.push(wire.len());
    points.sort_unstable();
    points.dedup();
    let mut frames = Vec::new();
    for piece in points.windows(2) {
        decoder.push(&wire[piece[0]..piece[1]]);
        while let Some(frame) = decoder.next_frame()? {
            frames.push(frame);
        }
    }
    Ok(frames)
}

proptest! {
    #[test]
    fn any_split_of_any_frames_reassembles(
        payloads in vec(vec(any::<u8>(), 0..700), 0..8),
        cuts in vec(any::<Index>(), 0..24),
    ) {
        let wire: Vec<u8> = payloads.iter().flat_map(|p| encode(p)).collect();
        let mut decoder = FrameDecoder::new(700);
        let frames = feed(&mut decoder, &wire, &cuts).unwrap();
        prop_assert_eq!(frames, payloads);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn an_oversize_length_is_always_refused_before_its_body(
        limit in 0usize..=MAX_FRAME_LEN + 10,
        excess in 1u64..=u32::MAX as u64,
        before in vec(vec(any::<u8>(), 0..64), 0..4),
        cut in 0usize..=LENGTH_PREFIX_LEN,
    ) {
        let effective = limit.min(MAX_FRAME_LEN);
        let len = (effective as u64 + excess).min(u32::MAX as u64);
        prop_assume!(len > effective as u64);
        let before: Vec<Vec<u8>> =
            before.into_iter().map(|mut p| { p.truncate(effective); p }).collect();
        let mut decoder = FrameDecoder::new(limit);
        for payload in &before {
            decoder.push(&encode(payload));
        }
        let prefix = (len as u32).to_be_bytes();
        decoder.push(&prefix[..cut]);
        for payload in &before {
            prop_assert_eq!(decoder.next_frame(), Ok(Some(payload.clone())));
        }
        if cut < LENGTH_PREFIX_LEN {
            prop_assert_eq!(decoder.next_frame(), Ok(None));
            decoder.push(&prefix[cut..]);
        }
        prop_assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { len, max: effective })
        );
    }
}
