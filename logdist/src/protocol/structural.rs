//! Stage 1 of the fast packet validator ([`PacketValidator::count_if_valid`]): finds the JSON
//! structure of a payload 64 bytes at a time, in the manner of simdjson's first stage, and hands
//! stage 2 (`packet_scan.rs`) the positions that matter, in order ([`Structurals`]).
//!
//! Each 64-byte block becomes a few 64-bit masks (bit *i* for byte *i*): quotes, backslashes,
//! the operators `{ } [ ] : ,`, JSON whitespace, control bytes and non-ASCII bytes. From them,
//! with the state carried from the block before: which characters a backslash escapes, which
//! quotes are real, which bytes lie inside a string (a prefix XOR of the real quotes: a
//! carry-less multiply by all ones on x86-64), and where each run of other bytes (a number, a
//! literal, or garbage) starts. The index lists, in order: operators outside strings, every
//! real quote (so a string's end is the next index after its start), each escaping backslash
//! inside a string, and the first byte of each run. Stage 1 also notes what only it can see: a
//! control byte inside a string, a string still open at the end, and whether a string holds a
//! non-ASCII byte (then the whole payload gets one UTF-8 check; outside strings stage 2 refuses
//! such a byte anyway).
//!
//! Three kernels classify a block, with the same answers, the fastest the CPU has chosen at
//! run time: AVX-512BW, AVX2 (both with PCLMULQDQ), and a portable one for every other CPU. Everything after the block's
//! masks is shared, safe code.
//!
//! **Unsafe.** This is the only module of the validator with `unsafe`, and it is used for three
//! things only: calling a SIMD kernel, which is sound because [`Kernel::Avx2`] and
//! [`Kernel::Avx512`] can only be obtained after `is_x86_feature_detected!` said the CPU has
//! every feature the kernel is compiled with; the unaligned loads in them, which read from
//! a `&[u8; 64]`, so every byte read is inside one borrowed array (and the kernels' stores of
//! positions, 8 slots (AVX2) or 16 (AVX-512) at an offset that leaves them inside one
//! `&mut [u32; 64]`, a bounds-checked slice of the buffer); and reading the payload at
//! the positions of a [`Window`] without bounds checks, which is sound because every position
//! listed is inside the payload and larger than the one before, by construction and whatever
//! the kernels answer (see [`Window`]).
//!
//! [`PacketValidator::count_if_valid`]: super::packet::PacketValidator::count_if_valid

/// Which block classifier stage 1 runs. All give the same answers on every input; the tests
/// run each one this CPU has on every input they make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Byte by byte through a lookup table: any CPU.
    Portable,
    /// AVX2 and PCLMULQDQ (with POPCNT and BMI1, which every AVX2 CPU has) on x86-64. Only
    /// [`Kernel::detect`] and [`Kernel::available`] make it, after checking the CPU.
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2Token),
    /// AVX-512BW: a block is one vector, its masks come straight from mask registers. Made
    /// like [`Kernel::Avx2`], whose checks it includes.
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512Token),
}

/// Proof that the CPU has AVX2, PCLMULQDQ, POPCNT and BMI1: private field, so it can only be
/// built by [`Avx2Token::detect`].
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avx2Token(());

/// Proof that the CPU has what [`Avx2Token`] proves and AVX-512F and AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avx512Token(());

#[cfg(target_arch = "x86_64")]
impl Avx2Token {
    fn detect() -> Option<Avx2Token> {
        (is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("pclmulqdq")
            && is_x86_feature_detected!("popcnt")
            && is_x86_feature_detected!("bmi1"))
        .then_some(Avx2Token(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl Avx512Token {
    fn detect() -> Option<Avx512Token> {
        (Avx2Token::detect().is_some()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw"))
        .then_some(Avx512Token(()))
    }
}

impl Kernel {
    /// The fastest kernel this CPU runs (detected once per process).
    pub fn detect() -> Kernel {
        static DETECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            Kernel::available()
                .pop()
                .expect("the portable kernel runs anywhere")
        })
    }

    /// Every kernel this CPU runs, portable first, fastest last.
    pub fn available() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            kernels.extend(Avx2Token::detect().map(Kernel::Avx2));
            kernels.extend(Avx512Token::detect().map(Kernel::Avx512));
        }
        kernels
    }

    /// A short name, for benchmarks and test messages.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) => "avx512",
        }
    }
}

/// The masks of one 64-byte block; bit *i* stands for byte *i*.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BlockMasks {
    quote: u64,
    backslash: u64,
    /// `{ } [ ] : ,`
    op: u64,
    /// Space, tab, line feed, carriage return: JSON's whitespace, no more.
    ws: u64,
    /// Bytes below 0x20 (which a JSON string may not hold unescaped) or above 0x7f (which
    /// need a UTF-8 check): one mask, because both are rare and matter only inside strings.
    unusual: u64,
}

/// What stage 1 carries from one block to the next, and what it found wrong.
#[derive(Debug, Default, Clone, Copy)]
struct CarriedState {
    /// 1 when the block before ended with an escaping backslash: byte 0 is escaped.
    escaped_carry: u64,
    /// All ones when the block before ended inside a string.
    in_string: u64,
    /// 1 when the block before ended inside a run of other bytes.
    run_carry: u64,
    /// A control byte was seen inside a string: the payload is invalid.
    ctrl_in_string: bool,
    /// A non-ASCII byte was seen inside a string: the payload needs a UTF-8 check. (One
    /// outside strings needs none: stage 2 refuses every token that holds one.)
    non_ascii_in_string: bool,
}

/// Marks the bytes that a backslash escapes, and the backslashes that escape (a backslash that
/// is itself escaped escapes nothing). Backslashes are rare, so this walks them one by one.
#[inline(always)]
fn escapes(backslash: u64, carry: &mut u64) -> (u64, u64) {
    if backslash | *carry == 0 {
        return (0, 0);
    }
    let mut escaped = *carry;
    let mut escaping = 0u64;
    let mut rest = backslash & !escaped;
    while rest != 0 {
        let bit = rest & rest.wrapping_neg();
        escaping |= bit;
        escaped |= bit << 1;
        rest &= !(bit | bit << 1);
    }
    *carry = escaping >> 63;
    (escaped, escaping)
}

/// Prefix XOR without a carry-less multiply: bit *i* of the result is the XOR of bits 0..=*i*.
#[inline(always)]
fn prefix_xor_portable(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// Notes what the unusual bytes of `block` inside strings (`bits`) are: control bytes or
/// non-ASCII ones. Rare (non-ASCII text), so byte by byte.
#[cold]
#[inline(never)]
fn note_unusual(block: &[u8; 64], mut bits: u64, state: &mut CarriedState) {
    while bits != 0 {
        let byte = block[bits.trailing_zeros() as usize];
        if byte < 0x20 {
            state.ctrl_in_string = true;
        } else {
            state.non_ascii_in_string = true;
        }
        bits &= bits - 1;
    }
}

/// From a block's masks to its structural bits (see the module docs), updating the carried
/// state. `prefix_xor` is the kernel's.
#[inline(always)]
fn structural_bits(
    block: &[u8; 64],
    m: BlockMasks,
    state: &mut CarriedState,
    prefix_xor: impl Fn(u64) -> u64,
) -> u64 {
    let (escaped, escaping) = escapes(m.backslash, &mut state.escaped_carry);
    let quote = m.quote & !escaped;
    // Set from an opening quote up to the byte before its closing quote.
    let in_string = prefix_xor(quote) ^ state.in_string;
    state.in_string = ((in_string as i64) >> 63) as u64;
    if m.unusual & in_string != 0 {
        note_unusual(block, m.unusual & in_string, state);
    }
    let outside = !in_string & !quote;
    let run = outside & !m.op & !m.ws;
    let run_start = run & !((run << 1) | state.run_carry);
    state.run_carry = run >> 63;
    (m.op & outside) | quote | (escaping & in_string) | run_start
}

/// Class bits of one byte for the portable kernel.
const QUOTE: u8 = 1;
const BACKSLASH: u8 = 2;
const OP: u8 = 4;
const WS: u8 = 8;
const UNUSUAL: u8 = 16;

static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'"' => QUOTE,
            b'\\' => BACKSLASH,
            b'{' | b'}' | b'[' | b']' | b':' | b',' => OP,
            b' ' => WS,
            b'\t' | b'\n' | b'\r' => WS | UNUSUAL,
            0..=0x1f | 0x80..=0xff => UNUSUAL,
            _ => 0,
        };
        b += 1;
    }
    table
};

fn classify_portable(block: &[u8; 64]) -> BlockMasks {
    let mut m = BlockMasks::default();
    for (i, &b) in block.iter().enumerate() {
        let class = CLASS[b as usize];
        let bit = |flag: u8| u64::from(class & flag != 0) << i;
        m.quote |= bit(QUOTE);
        m.backslash |= bit(BACKSLASH);
        m.op |= bit(OP);
        m.ws |= bit(WS);
        m.unusual |= bit(UNUSUAL);
    }
    m
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::BlockMasks;
    use std::arch::x86_64::*;

    /// Nibble tables: a byte is an operator or whitespace when the entries of its low and high
    /// nibble share a bit. Bits 0–2 are operators (`,` `:` and the four brackets), bits 3–4
    /// whitespace (space; tab, line feed, carriage return). No other byte has a shared bit.
    pub(super) const LOW_NIBBLE: [i8; 16] =
        [8, 0, 0, 0, 0, 0, 0, 0, 0, 16, 2 | 16, 4, 1, 4 | 16, 0, 0];
    pub(super) const HIGH_NIBBLE: [i8; 16] = [16, 0, 1 | 8, 2, 0, 4, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0];

    /// Masks of 32 bytes, in the low 32 bits of each field.
    ///
    /// # Safety
    /// The CPU must have AVX2 (the caller holds an `Avx2Token`).
    #[target_feature(enable = "avx2")]
    unsafe fn half(bytes: __m256i) -> BlockMasks {
        let low_table = _mm256_broadcastsi128_si256(_mm_loadu_si128(LOW_NIBBLE.as_ptr().cast()));
        let high_table = _mm256_broadcastsi128_si256(_mm_loadu_si128(HIGH_NIBBLE.as_ptr().cast()));
        let nibble = _mm256_set1_epi8(0x0f);
        let low = _mm256_shuffle_epi8(low_table, _mm256_and_si256(bytes, nibble));
        let high = _mm256_shuffle_epi8(
            high_table,
            _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble),
        );
        let class = _mm256_and_si256(low, high);
        let zero = _mm256_setzero_si256();
        let none_of = |bits: i8| {
            let hit = _mm256_and_si256(class, _mm256_set1_epi8(bits));
            !(_mm256_movemask_epi8(_mm256_cmpeq_epi8(hit, zero)) as u32) as u64
        };
        let equal = |byte: u8| {
            _mm256_movemask_epi8(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(byte as i8))) as u32
                as u64
        };
        // As signed bytes, 0x80..=0xff are negative: below 0x20 with the control bytes.
        let unusual = _mm256_cmpgt_epi8(_mm256_set1_epi8(0x20), bytes);
        BlockMasks {
            quote: equal(b'"'),
            backslash: equal(b'\\'),
            op: none_of(7),
            ws: none_of(8 | 16),
            unusual: _mm256_movemask_epi8(unusual) as u32 as u64,
        }
    }

    /// The masks of a 64-byte block.
    ///
    /// # Safety
    /// The CPU must have AVX2 (the caller holds an `Avx2Token`). Both loads read 32 bytes
    /// inside `block`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn classify(block: &[u8; 64]) -> BlockMasks {
        let lo = half(_mm256_loadu_si256(block.as_ptr().cast()));
        let hi = half(_mm256_loadu_si256(block.as_ptr().add(32).cast()));
        BlockMasks {
            quote: lo.quote | hi.quote << 32,
            backslash: lo.backslash | hi.backslash << 32,
            op: lo.op | hi.op << 32,
            ws: lo.ws | hi.ws << 32,
            unusual: lo.unusual | hi.unusual << 32,
        }
    }

    /// Prefix XOR as a carry-less multiply by all ones.
    ///
    /// # Safety
    /// The CPU must have PCLMULQDQ (the caller holds an `Avx2Token`).
    #[target_feature(enable = "pclmulqdq,sse2")]
    pub(super) unsafe fn prefix_xor(x: u64) -> u64 {
        let product = _mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), _mm_set1_epi8(-1), 0);
        _mm_cvtsi128_si64(product) as u64
    }

    /// Runs stage 1 over `blocks` (whole 64-byte blocks starting at offset `base` of the
    /// input), appending each block's structural positions to `out`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and PCLMULQDQ (the caller holds an `Avx2Token`).
    #[target_feature(enable = "avx2,pclmulqdq,popcnt,bmi1")]
    pub(super) unsafe fn run(
        base: usize,
        blocks: &[u8],
        state: &mut super::CarriedState,
        out: &mut super::IndexBuffer<'_>,
    ) {
        // Local copies, so the loop keeps them in registers.
        let (mut carried, mut positions) = (*state, out.reborrow());
        for (i, block) in blocks.chunks_exact(64).enumerate() {
            let block = block.try_into().expect("chunks of 64 bytes");
            let bits =
                super::structural_bits(block, classify(block), &mut carried, |x| prefix_xor(x));
            push_bits(&mut positions, (base + 64 * i) as u32, bits);
        }
        (*state, out.len) = (carried, positions.len);
    }

    /// For each byte value, the offsets of its set bits in order, one a byte (then zeros).
    static BIT_OFFSETS: [u64; 256] = {
        let mut table = [0u64; 256];
        let mut byte = 0;
        while byte < 256 {
            let (mut packed, mut n, mut bit) = (0u64, 0, 0);
            while bit < 8 {
                if byte >> bit & 1 == 1 {
                    packed |= (bit as u64) << (8 * n);
                    n += 1;
                }
                bit += 1;
            }
            table[byte] = packed;
            byte += 1;
        }
        table
    };

    /// [`super::IndexBuffer::push_bits`] a byte of the mask at a time from a table, with no
    /// chain of trailing-zero counts: the positions of 8 bits a store.
    ///
    /// # Safety
    /// The CPU must have AVX2 and POPCNT (the caller holds an `Avx2Token`). Each store writes
    /// 8 slots from the count written so far, at most 56 (the bits of the 7 bytes before):
    /// inside the 64 slots taken, which `top_up` leaves free before every block (the slice
    /// is bounds-checked besides).
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn push_bits(out: &mut super::IndexBuffer<'_>, base: u32, bits: u64) {
        let slots: &mut [u32; 64] = (&mut out.positions[out.len..out.len + 64])
            .try_into()
            .expect("64 slots");
        let mut at = _mm256_set1_epi32(base as i32);
        let mut written = 0;
        for byte in bits.to_le_bytes() {
            let offsets = _mm_cvtsi64_si128(BIT_OFFSETS[byte as usize] as i64);
            _mm256_storeu_si256(
                slots.as_mut_ptr().add(written).cast(),
                _mm256_add_epi32(_mm256_cvtepu8_epi32(offsets), at),
            );
            written += byte.count_ones() as usize;
            at = _mm256_add_epi32(at, _mm256_set1_epi32(8));
        }
        out.len += written;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::avx2::{HIGH_NIBBLE, LOW_NIBBLE};
    use super::BlockMasks;
    use std::arch::x86_64::*;

    /// The masks of a 64-byte block, with the nibble tables of the AVX2 kernel.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512BW (the caller holds an `Avx512Token`). The load
    /// reads the 64 bytes of `block`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn classify(block: &[u8; 64]) -> BlockMasks {
        let bytes = _mm512_loadu_si512(block.as_ptr().cast());
        let low_table = _mm512_broadcast_i32x4(_mm_loadu_si128(LOW_NIBBLE.as_ptr().cast()));
        let high_table = _mm512_broadcast_i32x4(_mm_loadu_si128(HIGH_NIBBLE.as_ptr().cast()));
        let nibble = _mm512_set1_epi8(0x0f);
        let low = _mm512_shuffle_epi8(low_table, _mm512_and_si512(bytes, nibble));
        let high = _mm512_shuffle_epi8(
            high_table,
            _mm512_and_si512(_mm512_srli_epi16::<4>(bytes), nibble),
        );
        let class = _mm512_and_si512(low, high);
        BlockMasks {
            quote: _mm512_cmpeq_epi8_mask(bytes, _mm512_set1_epi8(b'"' as i8)),
            backslash: _mm512_cmpeq_epi8_mask(bytes, _mm512_set1_epi8(b'\\' as i8)),
            op: _mm512_test_epi8_mask(class, _mm512_set1_epi8(7)),
            ws: _mm512_test_epi8_mask(class, _mm512_set1_epi8(8 | 16)),
            // As signed bytes, 0x80..=0xff are negative: below 0x20 with the control bytes.
            unusual: _mm512_cmplt_epi8_mask(bytes, _mm512_set1_epi8(0x20)),
        }
    }

    /// [`super::avx2::run`] with this kernel's masks.
    ///
    /// # Safety
    /// As for `classify`, and the CPU must have PCLMULQDQ, POPCNT and BMI1 (which an
    /// `Avx512Token` proves too).
    #[target_feature(enable = "avx512f,avx512bw,pclmulqdq,popcnt,bmi1")]
    pub(super) unsafe fn run(
        base: usize,
        blocks: &[u8],
        state: &mut super::CarriedState,
        out: &mut super::IndexBuffer<'_>,
    ) {
        // Local copies, so the loop keeps them in registers.
        let (mut carried, mut positions) = (*state, out.reborrow());
        for (i, block) in blocks.chunks_exact(64).enumerate() {
            let block = block.try_into().expect("chunks of 64 bytes");
            let bits = super::structural_bits(block, classify(block), &mut carried, |x| {
                super::avx2::prefix_xor(x)
            });
            push_bits(&mut positions, (base + 64 * i) as u32, bits);
        }
        (*state, out.len) = (carried, positions.len);
    }

    /// Lane numbers, for positions.
    const LANES: [u32; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    /// [`super::IndexBuffer::push_bits`] with a compress: the positions of 16 bits a store.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and POPCNT (the caller holds an `Avx512Token`). Each store
    /// writes 16 slots from the count written so far, at most 48: inside the 64 slots taken.
    #[target_feature(enable = "avx512f,popcnt")]
    unsafe fn push_bits(out: &mut super::IndexBuffer<'_>, base: u32, bits: u64) {
        let slots: &mut [u32; 64] = (&mut out.positions[out.len..out.len + 64])
            .try_into()
            .expect("64 slots");
        let lanes = _mm512_loadu_si512(LANES.as_ptr().cast());
        let mut written = 0;
        for quarter in 0..4 {
            let mask = (bits >> (16 * quarter)) as u16;
            let at = _mm512_add_epi32(lanes, _mm512_set1_epi32((base + 16 * quarter) as i32));
            _mm512_storeu_si512(
                slots.as_mut_ptr().add(written).cast(),
                _mm512_maskz_compress_epi32(mask, at),
            );
            written += mask.count_ones() as usize;
        }
        out.len += written;
    }
}

/// Positions found by stage 1 but not yet taken by stage 2: a buffer kept per thread (so it is
/// neither allocated nor zeroed per payload) and its length.
pub(crate) struct IndexBuffer<'b> {
    positions: &'b mut [u32; BUFFER],
    len: usize,
}

/// Room for this many positions (16 KiB a thread).
const BUFFER: usize = 4096;

/// Blocks classified per top-up: 1 KiB of input, at most 1,024 positions.
const TOP_UP_BLOCKS: usize = 16;

/// Stage 2 looks at up to this many positions at once ([`Structurals::window`]): more than a
/// log object of the common shape has, so such an object is read in one go.
pub(crate) const WINDOW: usize = 96;

thread_local! {
    static POSITIONS: std::cell::RefCell<Box<[u32; BUFFER]>> =
        std::cell::RefCell::new(Box::new([0; BUFFER]));
}

impl IndexBuffer<'_> {
    /// The same buffer, borrowed again (for a loop's local copy; write its `len` back).
    #[inline(always)]
    fn reborrow(&mut self) -> IndexBuffer<'_> {
        IndexBuffer {
            positions: &mut *self.positions,
            len: self.len,
        }
    }

    /// Appends the positions of the set bits of a block that starts at `base`, eight at a time
    /// (the slots past the last position get junk that is never read). The caller leaves 64
    /// slots free.
    #[inline(always)]
    fn push_bits(&mut self, base: u32, mut bits: u64) {
        let count = bits.count_ones() as usize;
        let slots = &mut self.positions[self.len..self.len + 64];
        for eight in slots.chunks_exact_mut(8).take(count.div_ceil(8)) {
            for slot in eight {
                *slot = base + bits.trailing_zeros();
                bits &= bits.wrapping_sub(1);
            }
        }
        self.len += count;
    }
}

/// Runs `walk` over the structural positions of `input` (stage 1 with the kernel given), with
/// this thread's buffer. `None` for inputs of 4 GiB or more (positions are `u32`).
pub(crate) fn scan<'a, R>(
    input: &'a [u8],
    kernel: Kernel,
    walk: impl FnOnce(&mut Structurals<'a, '_>) -> Option<R>,
) -> Option<R> {
    u32::try_from(input.len()).ok()?;
    POSITIONS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut positions) => walk(&mut Structurals::new(input, kernel, &mut positions)),
        // Only if `walk` itself scanned again, which it does not.
        Err(_) => walk(&mut Structurals::new(
            input,
            kernel,
            &mut Box::new([0; BUFFER]),
        )),
    })
}

/// Structural positions of a payload not yet taken ([`Structurals::window`]), with the
/// payload, for stage 2 to read the common shape of a log object a few positions at a time
/// ([`Window::next`]) without a bounds check per position.
///
/// Every position in it is less than the payload's length and larger than the one before it.
/// That holds by construction, whatever a kernel's masks say: a position is the offset of a
/// set bit of a block (`push_bits`, in increasing order, blocks in increasing order), whole
/// blocks lie inside the payload, and the positions of the last, padded block past the
/// payload's end are dropped (`top_up`). [`Positions`] relies on it.
#[derive(Clone, Copy)]
pub(crate) struct Window<'a, 'w> {
    input: &'a [u8],
    positions: &'w [u32],
}

impl<'a> Window<'a, '_> {
    /// The payload.
    #[inline(always)]
    pub(crate) fn input(&self) -> &'a [u8] {
        self.input
    }

    /// How many positions are left.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.positions.len()
    }

    /// The next `N` positions, consumed; `None` (consuming nothing) if fewer are left.
    #[inline(always)]
    pub(crate) fn next<const N: usize>(&mut self) -> Option<Positions<'a, N>> {
        let (first, rest) = self.positions.split_first_chunk::<N>()?;
        self.positions = rest;
        Some(Positions {
            input: self.input,
            at: *first,
        })
    }
}

/// `N` consecutive positions of a [`Window`], with its payload: so each position is inside
/// the payload and larger than the one before.
pub(crate) struct Positions<'a, const N: usize> {
    input: &'a [u8],
    at: [u32; N],
}

impl<'a, const N: usize> Positions<'a, N> {
    /// The `i`-th position.
    #[inline(always)]
    pub(crate) fn at(&self, i: usize) -> usize {
        self.at[i] as usize
    }

    /// The payload's byte at the `i`-th position.
    #[inline(always)]
    pub(crate) fn byte(&self, i: usize) -> u8 {
        let at = self.at[i] as usize;
        // SAFETY: every position of a window is less than the payload's length (see `Window`).
        unsafe { *self.input.get_unchecked(at) }
    }

    /// The bytes strictly between the `i`-th position and the next: a string's content when
    /// they are its quotes.
    #[inline(always)]
    pub(crate) fn between(&self, i: usize) -> &'a [u8] {
        let (start, end) = (self.at[i] as usize, self.at[i + 1] as usize);
        // SAFETY: the positions of a window increase and are less than the payload's length
        // (see `Window`), so `start + 1 <= end <= len`.
        unsafe { self.input.get_unchecked(start + 1..end) }
    }
}

/// The structural positions of one payload, in order, produced a few blocks at a time as
/// stage 2 asks for them (no allocation, whatever the payload's size).
pub(crate) struct Structurals<'a, 'b> {
    input: &'a [u8],
    kernel: Kernel,
    state: CarriedState,
    /// Offset of the next block to classify.
    next_block: usize,
    buffer: IndexBuffer<'b>,
    taken: usize,
}

impl<'a, 'b> Structurals<'a, 'b> {
    fn new(input: &'a [u8], kernel: Kernel, positions: &'b mut [u32; BUFFER]) -> Self {
        Structurals {
            input,
            kernel,
            state: CarriedState::default(),
            next_block: 0,
            buffer: IndexBuffer { positions, len: 0 },
            taken: 0,
        }
    }

    /// The next structural position, or `None` at the end of the payload.
    #[inline(always)]
    pub(crate) fn next(&mut self) -> Option<usize> {
        let taken = self.taken;
        if taken < self.buffer.len {
            self.taken = taken + 1;
            return Some(self.buffer.positions[taken % BUFFER] as usize);
        }
        self.next_after_top_up()
    }

    #[cold]
    #[inline(never)]
    fn next_after_top_up(&mut self) -> Option<usize> {
        self.top_up();
        let taken = self.taken;
        (taken < self.buffer.len).then(|| {
            self.taken = taken + 1;
            self.buffer.positions[taken] as usize
        })
    }

    /// The positions not yet taken, at least [`WINDOW`] of them unless the payload has fewer
    /// left; [`take`](Self::take) consumes them.
    #[inline(always)]
    pub(crate) fn window(&mut self) -> Window<'a, '_> {
        if self.buffer.len - self.taken < WINDOW && self.next_block < self.input.len() {
            self.top_up();
        }
        Window {
            input: self.input,
            positions: &self.buffer.positions[self.taken..self.buffer.len],
        }
    }

    /// Consumes `n` positions of the [`window`](Self::window).
    #[inline(always)]
    pub(crate) fn take(&mut self, n: usize) {
        debug_assert!(self.taken + n <= self.buffer.len);
        self.taken += n;
    }

    /// Once [`next`](Self::next) has returned `None`: true when stage 1 saw nothing wrong in the
    /// payload (no control byte inside a string, no string left open, valid UTF-8).
    pub(crate) fn clean(&self) -> bool {
        debug_assert!(
            self.next_block >= self.input.len(),
            "stage 1 has not finished"
        );
        !self.state.ctrl_in_string
            && self.state.in_string == 0
            && (!self.state.non_ascii_in_string || std::str::from_utf8(self.input).is_ok())
    }

    /// Classifies [`TOP_UP_BLOCKS`] blocks at a time until at least [`WINDOW`] positions wait
    /// or the input ends, first moving the positions not yet taken to the front when the
    /// buffer has no room for a top-up. The last, partial block is classified from a copy
    /// padded with spaces.
    #[inline(never)]
    fn top_up(&mut self) {
        let whole_blocks_end = self.input.len() / 64 * 64;
        while self.buffer.len - self.taken < WINDOW && self.next_block < self.input.len() {
            if BUFFER - self.buffer.len < 64 * (TOP_UP_BLOCKS + 1) {
                self.buffer
                    .positions
                    .copy_within(self.taken..self.buffer.len, 0);
                self.buffer.len -= self.taken;
                self.taken = 0;
            }
            let start = self.next_block;
            if start < whole_blocks_end {
                let end = (start + 64 * TOP_UP_BLOCKS).min(whole_blocks_end);
                self.classify(start, &self.input[start..end]);
                self.next_block = end;
            } else {
                let mut tail = [b' '; 64];
                tail[..self.input.len() - start].copy_from_slice(&self.input[start..]);
                let before = self.buffer.len;
                self.classify(start, &tail);
                self.next_block = self.input.len();
                // Spaces are never structural, so this finds nothing past the payload's end;
                // it makes sure, because `Window` reads without bounds checks.
                let end = self.input.len() as u32;
                while self.buffer.len > before && self.buffer.positions[self.buffer.len - 1] >= end
                {
                    self.buffer.len -= 1;
                }
            }
        }
    }

    /// Stage 1 over `blocks` (whole 64-byte blocks) that start at offset `base` of the input.
    fn classify(&mut self, base: usize, blocks: &[u8]) {
        match self.kernel {
            Kernel::Portable => {
                for (i, block) in blocks.chunks_exact(64).enumerate() {
                    let block = block.try_into().expect("chunks of 64 bytes");
                    let bits = structural_bits(
                        block,
                        classify_portable(block),
                        &mut self.state,
                        prefix_xor_portable,
                    );
                    self.buffer.push_bits((base + 64 * i) as u32, bits);
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Avx2Token` exists only once the CPU was found to have AVX2 and
            // PCLMULQDQ (`Avx2Token::detect`).
            Kernel::Avx2(_) => unsafe {
                avx2::run(base, blocks, &mut self.state, &mut self.buffer)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Avx512Token` exists only once the CPU was found to have AVX-512F,
            // AVX-512BW and all an `Avx2Token` needs (`Avx512Token::detect`).
            Kernel::Avx512(_) => unsafe {
                avx512::run(base, blocks, &mut self.state, &mut self.buffer)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(input: &[u8], kernel: Kernel) -> (Vec<usize>, bool) {
        scan(input, kernel, |s| {
            let mut out = Vec::new();
            while let Some(p) = s.next() {
                out.push(p);
            }
            Some((out, s.clean()))
        })
        .unwrap()
    }

    #[test]
    fn kernels_agree_on_masks_for_every_byte() {
        let mut block = [0u8; 64];
        for start in (0..256).step_by(64) {
            for (i, b) in block.iter_mut().enumerate() {
                *b = (start + i) as u8;
            }
            for kernel in Kernel::available() {
                if let Kernel::Portable = kernel {
                    continue;
                }
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `available` gives a SIMD kernel only after detecting its features.
                let simd = unsafe {
                    match kernel {
                        Kernel::Avx2(_) => avx2::classify(&block),
                        Kernel::Avx512(_) => avx512::classify(&block),
                        Kernel::Portable => unreachable!(),
                    }
                };
                #[cfg(target_arch = "x86_64")]
                assert_eq!(
                    simd,
                    classify_portable(&block),
                    "{} bytes {start}..",
                    kernel.name()
                );
            }
        }
    }

    #[test]
    fn finds_operators_quotes_escapes_and_runs() {
        let input = br#"{"a\"b":[1, true],"c":"x\\"}"#;
        for kernel in Kernel::available() {
            let (found, clean) = positions(input, kernel);
            let chars: String = found.iter().map(|&p| input[p] as char).collect();
            assert_eq!(chars, r#"{"\":[1,t],"":"\"}"#, "{}", kernel.name());
            assert!(clean);
        }
    }

    #[test]
    fn dense_and_patterned_blocks_list_every_position() {
        // Every byte an operator: 64 positions a block, the most a store may have to hold.
        let commas = vec![b','; 64 * 20 + 5];
        for kernel in Kernel::available() {
            let (found, _) = positions(&commas, kernel);
            assert_eq!(
                found,
                (0..commas.len()).collect::<Vec<_>>(),
                "{}",
                kernel.name()
            );
        }
        // Operators, spaces and digits in pseudo-random order: every count of positions a byte
        // of the mask can have, in every byte of a block. The portable kernel is the reference.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in [1, 63, 64, 65, 640, 64 * 40 + 17] {
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    [b',', b' ', b'1', b':'][(seed >> 62) as usize]
                })
                .collect();
            let (expected, _) = positions(&input, Kernel::Portable);
            for kernel in Kernel::available() {
                assert_eq!(
                    positions(&input, kernel).0,
                    expected,
                    "{} len {len}",
                    kernel.name()
                );
            }
        }
    }

    #[test]
    fn escapes_and_strings_carry_across_blocks() {
        // A backslash as the last byte of a block escapes the first byte of the next.
        let mut input = vec![b' '; 62];
        input[0] = b'"';
        input.push(b'\\');
        input.push(b'\\');
        input.extend_from_slice(b"\\\"x\" 12");
        for kernel in Kernel::available() {
            let (found, clean) = positions(&input, kernel);
            assert_eq!(found, vec![0, 62, 64, 67, 69], "{}", kernel.name());
            assert!(clean);
        }
        for kernel in Kernel::available() {
            let (_, clean) = positions(b"\"open", kernel);
            assert!(!clean, "an open string is not clean");
            let (_, clean) = positions(b"\"a\x01\"", kernel);
            assert!(!clean, "a control byte in a string is not clean");
            let (_, clean) = positions(b"\"\xff\"", kernel);
            assert!(!clean, "invalid UTF-8 is not clean");
        }
    }
}
