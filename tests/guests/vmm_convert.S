# Conversions through veil's port-I/O hypercall, in 64-bit mode, on memory built by
# veil-vmm: a round trip shared -> private -> shared of one page in a region that keeps
# contents and of one in a region that discards them, then four requests veil must
# refuse.
#
# The host presets rdi = a page of the preserving region, rsi = a page of the discarding
# region, r13 = the last page of guest memory.
#
# Port 0x10: 32-bit reports (result codes, and 64-bit values low half first).
# Port 0x12: checkpoint, the page whose address is in eax is private: the host checks it
#            cannot touch it.
# Port 0x13: checkpoint, that page is shared again: the host reads it.
#
# Attribute word: bit 4 = to private, bits 3:0 = page size (0 = 4K), bits 63:5 reserved.

.intel_syntax noprefix
.code64

# A conversion request; reports the result code the host put in rax.
.macro MAP_GPA_RANGE gpa, pages, attrs
    mov rax, 12
    mov rbx, \gpa
    mov rcx, \pages
    mov rdx, \attrs
    out 0x5e, al
    out 0x10, eax
.endm

# Reports rax as two 32-bit values, low half first.
.macro REPORT64
    out 0x10, eax
    shr rax, 32
    out 0x10, eax
.endm

# Pattern A (0xa11ce000_00000000 | page) goes to the page's first qword while it is
# shared, pattern B (0xb0b00000_00000000 | page) to its last qword while it is private.
.macro ROUND_TRIP page
    mov rax, 0xa11ce00000000000
    or rax, \page
    mov [\page], rax
    MAP_GPA_RANGE \page, 1, 0x10
    mov rax, \page
    out 0x12, eax
    # Private now, and still the guest's: A if the region keeps contents, 0 if not.
    mov rax, [\page]
    REPORT64
    mov rax, 0xb0b0000000000000
    or rax, \page
    mov [\page + 0xff8], rax
    MAP_GPA_RANGE \page, 1, 0
    mov rax, \page
    out 0x13, eax
    # Shared again: A and B if the region keeps contents, zeros if not.
    mov rax, [\page]
    REPORT64
    mov rax, [\page + 0xff8]
    REPORT64
.endm

.text
.global _start
_start:
    ROUND_TRIP rdi
    ROUND_TRIP rsi

    # Reserved attribute bit 5 on a to-private request: EINVAL.
    MAP_GPA_RANGE rdi, 1, 0x30
    # Two pages from the last page of guest memory, one past its end: EINVAL.
    MAP_GPA_RANGE r13, 2, 0x10
    # The first page past the end of guest memory: EINVAL.
    lea r14, [r13 + 0x1000]
    MAP_GPA_RANGE r14, 1, 0x10
    # 2^52 pages: the size overflows 64 bits. EINVAL.
    MAP_GPA_RANGE rdi, 0x10000000000000, 0x10
    hlt
