# bad_requests: malformed KVM_HC_MAP_GPA_RANGE requests are refused and change nothing.
#
# 64-bit mode, entered with:
#   %rdi  a shared page of guest memory
#   %rsi  the first guest-physical address past the end of guest memory
#
# The guest fills the page with 0x5a, then makes each request below with `vmmcall`
# (%rax = 12, %rbx = gpa, %rcx = pages, %rdx = attributes). After each one it checks
# the result in %rax and that the page still reads 0x5a: had any request turned the page
# private, the guest would read the private side instead, which is zero. A last, valid
# pair of requests shows that check can fail: private and back to shared, the page reads
# zero because veil discarded both sides on the way.
#
# Reports on port 0x10 (32 bits each): per case the result from %rax, then 0x600d00NN
# when both checks held or 0xbad000NN when one did not (NN = case number). Halts after
# the last case.

        .code64

.macro br_case num, gpa, pages, attrs, expect, fill
        movq    \gpa, %rbx
        movq    \pages, %rcx
        movq    \attrs, %rdx
        movq    $12, %rax
        vmmcall
        outl    %eax, $0x10
        movq    %rax, %r9
        movl    $0x600d0000 + \num, %r10d
        cmpq    \expect, %r9
        je      1f
        movl    $0xbad00000 + \num, %r10d
1:      movq    %rdi, %r11
        movq    $4096, %rcx
        movb    \fill, %al
        movq    %r11, %rdi
        cld
        repe scasb
        je      2f
        movl    $0xbad00000 + \num, %r10d
2:      movq    %r11, %rdi
        movl    %r10d, %eax
        outl    %eax, $0x10
.endm

        movq    %rdi, %r11
        movb    $0x5a, %al
        movq    $4096, %rcx
        cld
        rep stosb
        movq    %r11, %rdi
        movq    %rsi, %r8
        subq    $4096, %r8                  # the last page of guest memory

        # 1: an attribute bit no one defined (bit 5).
        br_case 1, %rdi, $1, $0x30, $22, $0x5a
        # 2: the highest attribute bit.
        br_case 2, %rdi, $1, $0x8000000000000010, $22, $0x5a
        # 3: a page-size hint that does not exist (3).
        br_case 3, %rdi, $1, $0x13, $22, $0x5a
        # 4: past the end of guest memory.
        br_case 4, %rsi, $1, $0x10, $22, $0x5a
        # 5: from the last page of guest memory across its end.
        br_case 5, %r8, $2, $0x10, $22, $0x5a
        # 6: pages * 4096 overflows 64 bits (KVM passes it on: gfn + pages does not).
        br_case 6, %rdi, $0x10000000000000, $0x10, $22, $0x5a
        # 7: the range wraps past the top of the address space.
        br_case 7, $0xfffffffffffff000, $1, $0x10, $22, $0x5a
        # 8, 9: valid: to private and back; the page now reads zero.
        br_case 8, %rdi, $1, $0x10, $0, $0
        br_case 9, %rdi, $1, $0x0, $0, $0
        hlt
