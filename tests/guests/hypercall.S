# Conversion requests through the port-I/O hypercall, in 64-bit mode.
#
# Each case loads the registers as for KVM_HC_MAP_GPA_RANGE (rax = 12, rbx = gpa,
# rcx = pages, rdx = attributes), executes `out 0x5e, al`, and reports two 32-bit values
# on port 0x10: the result the host put in rax, then 0x600d00NN if it is the expected one
# or 0xbad000NN if not (NN = case number). The guest halts after the last case.
#
# Guest memory is 2 MiB at 0. Attribute word: bit 4 = to private, bits 3:0 = page size
# (0 = 4K, 1 = 2M, 2 = 1G), bits 63:5 reserved.

.intel_syntax noprefix
.code64

.macro CASE num, gpa, pages, attrs, expect
    mov rax, 12
    mov rbx, \gpa
    mov rcx, \pages
    mov rdx, \attrs
    out 0x5e, al
    out 0x10, eax
    cmp rax, \expect
    mov eax, 0x600d0000 + \num
    je 1f
    mov eax, 0xbad00000 + \num
1:
    out 0x10, eax
.endm

.text
.global _start
_start:
    # 1: 4 pages at 1 MiB to private: success.
    CASE 1, 0x100000, 4, 0x10, 0
    # 2: 1 page at 1 MiB to shared, with the 2 MiB size hint: success, and shared.
    CASE 2, 0x100000, 1, 0x1, 0
    # 3: misaligned gpa: EINVAL.
    CASE 3, 0x100001, 1, 0x10, 22
    # 4: zero pages: EINVAL.
    CASE 4, 0x100000, 0, 0x10, 22
    # 5: pages * 4096 overflows 64 bits: EINVAL.
    CASE 5, 0x1000, 0x10000000000000, 0x10, 22
    # 6: outside guest memory: EINVAL.
    CASE 6, 0x10000000, 1, 0x10, 22
    # 7: reserved attribute bit 5: EINVAL.
    CASE 7, 0x100000, 1, 0x30, 22
    # 8: page-size field 3: EINVAL.
    CASE 8, 0x100000, 1, 0x13, 22
    # 9: gpa + pages runs past the end of guest memory: EINVAL.
    CASE 9, 0x1ff000, 2, 0x10, 22
    # 10: the host asks for a retry on this range: EAGAIN.
    CASE 10, 0x180000, 1, 0x10, 11
    hlt
