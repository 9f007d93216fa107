# The guest of `veil soak`: random conversions of 4 KiB pages and 2 MiB blocks, each
# checked against the content policy, for as long as the host lets it run.
#
# Every vCPU starts here in long mode, with registers the host sets:
#   rdi = the vCPU's index
#   rsi = the hypercall transport (`hypercall.S`)
#   rsp = the top of this vCPU's stack page
#   r8  = this vCPU's area: r9 blocks of 2 MiB at a 2 MiB-aligned address, all private
#   r9  = the number of blocks (1 to 8, so a page's index in the area fits 12 bits)
#   r10 = one byte per page of the area: its state, 0 = private, 1 = shared (zeros at
#         entry: all RAM is private from launch)
#   r11 = one quadword per page: what the page holds, as far as the guest knows
#         (zeros at entry)
#   r12 = the state of this vCPU's pseudo-random generator (xorshift64, not zero)
#   r13 = the content policy: 0 = preserve (contents survive a conversion),
#         1 = discard (a page that changes state reads zeros afterwards)
#   r14 = the stop page, shared by every vCPU; the host writes a non-zero quadword at
#         its start when the time is up
#
# A page's contents are two quadwords, at its start and at its end, that hold the same
# tag; the rest of the page stays zero. The tag of page i written in round r (counted
# from 0) by vCPU v is (r + 1) << 32 | v << 16 | i, never zero, so a page that should
# hold zeros cannot pass for one written.
#
# Each round picks, from the generator, a 2 MiB block (one round in eight) or a 4 KiB
# page of the area, and the state to convert it to. For every page of that range it
# checks the page still holds what it last held, and writes this round's tag; then it
# converts the range with MAP_GPA_RANGE (2 MiB ones with the 2 MiB page-size hint);
# then it checks every page again: this round's tag, or zeros where the policy discards
# and the page changed state. A page that holds anything else is a mismatch. The round
# ends with a report to port 0x20 + v, a 32-bit word:
#   bits 0-11   the first page of the range, as an index in the area
#   bit 12      the range is a 2 MiB block (512 pages), else one page
#   bit 13      the range was converted to shared, else to private
#   bit 14      the request failed (the result was not 0): the vCPU reports nothing more
#   bits 16-31  the pages that mismatched in this round (at most 0xffff)
# during which the host audits the whole area. When the stop page says so, the vCPU
# writes the number of rounds it made to port 0x28 + v and halts; 0xffffffff there means
# the stop page could not be shared.
#
# Registers r15 counts the rounds, rbp holds this round's tag without the page index,
# r9 the state the round converts to; the round's range is in the locals below rsp.

.intel_syntax noprefix
.code64

.include "hypercall.S"

.equ PORT_ROUND, 0x20
.equ PORT_DONE, 0x28
.equ PAGES_2M, 512
.equ LAST_QWORD, 4088
.equ REPORT_2M, 1 << 12
.equ REPORT_SHARED, 1 << 13
.equ REPORT_FAILED, 1 << 14

# The locals, at rsp.
.equ FIRST, 0
.equ COUNT, 8
.equ HINT, 16
.equ MISSES, 24
.equ BLOCKS, 32
.equ LOCALS, 64

# Counts a mismatch unless both tagged quadwords of the page at rax hold rbx.
.macro CHECK
    cmp [rax], rbx
    jne 81f
    cmp [rax + LAST_QWORD], rbx
    je 82f
81:
    inc qword ptr [rsp + MISSES]
82:
.endm

# rax = the address of page rcx of the area.
.macro PAGE_ADDRESS
    mov rax, rcx
    shl rax, 12
    add rax, r8
.endm

# Reports the round to the host with `flags` (REPORT_FAILED or 0) added.
.macro REPORT flags
    mov eax, \flags
    or eax, dword ptr [rsp + FIRST]
    mov rbx, [rsp + HINT]
    shl ebx, 12
    or eax, ebx
    mov rbx, r9
    shl ebx, 13
    or eax, ebx
    mov rbx, [rsp + MISSES]
    cmp rbx, 0xffff
    jbe 83f
    mov ebx, 0xffff
83:
    shl ebx, 16
    or eax, ebx
    lea edx, [rdi + PORT_ROUND]
    out dx, eax
.endm

.text
.global _start
_start:
    sub rsp, LOCALS
    mov [rsp + BLOCKS], r9
    xor r15d, r15d
    mov qword ptr [rsp + FIRST], 0
    mov qword ptr [rsp + HINT], 0
    mov qword ptr [rsp + MISSES], 0
    # Share the stop page, so that the host can write into it.
    mov rbx, r14
    mov ecx, 1
    xor edx, edx
    call map_gpa_range
    test rax, rax
    jnz setup_failed

round:
    cmp qword ptr [r14], 0
    jne finish
    mov qword ptr [rsp + MISSES], 0

    # The next pseudo-random number.
    mov rax, r12
    mov rbx, rax
    shl rbx, 13
    xor rax, rbx
    mov rbx, rax
    shr rbx, 7
    xor rax, rbx
    mov rbx, rax
    shl rbx, 17
    xor rax, rbx
    mov r12, rax

    # Bit 3 picks the state to convert to, bits 2:0 the size, the rest the place.
    mov r9, rax
    shr r9, 3
    and r9, 1
    mov rcx, rax
    shr rax, 8
    xor edx, edx
    test cl, 7
    jnz 1f
    div qword ptr [rsp + BLOCKS]
    shl rdx, 9
    mov ecx, PAGES_2M
    mov ebx, PAGE_SIZE_2M
    jmp 2f
1:
    mov rcx, [rsp + BLOCKS]
    shl rcx, 9
    div rcx
    mov ecx, 1
    xor ebx, ebx
2:
    mov [rsp + FIRST], rdx
    mov [rsp + COUNT], rcx
    mov [rsp + HINT], rbx

    # This round's tag, without the page index.
    lea rbp, [r15 + 1]
    shl rbp, 32
    mov rax, rdi
    shl rax, 16
    or rbp, rax

    # Before converting: each page holds what it last held; then this round's tag.
    mov rcx, [rsp + FIRST]
    mov rdx, [rsp + COUNT]
3:
    PAGE_ADDRESS
    mov rbx, [r11 + rcx * 8]
    CHECK
    mov rbx, rbp
    or rbx, rcx
    mov [rax], rbx
    mov [rax + LAST_QWORD], rbx
    inc rcx
    dec rdx
    jnz 3b

    # The conversion: to private unless r9 says shared.
    mov rbx, [rsp + FIRST]
    shl rbx, 12
    add rbx, r8
    mov rcx, [rsp + COUNT]
    mov rdx, r9
    xor rdx, 1
    shl rdx, 4
    or rdx, [rsp + HINT]
    call map_gpa_range
    test rax, rax
    jnz request_failed

    # After: this round's tag, or zeros where the policy discards and the page changed
    # state.
    mov rcx, [rsp + FIRST]
    mov rdx, [rsp + COUNT]
4:
    PAGE_ADDRESS
    mov rbx, rbp
    or rbx, rcx
    test r13, r13
    jz 5f
    cmp [r10 + rcx], r9b
    je 5f
    xor ebx, ebx
5:
    CHECK
    mov [r11 + rcx * 8], rbx
    mov [r10 + rcx], r9b
    inc rcx
    dec rdx
    jnz 4b

    REPORT 0
    inc r15
    jmp round

request_failed:
    REPORT REPORT_FAILED
    jmp halt

setup_failed:
    mov r15d, 0xffffffff
finish:
    mov eax, r15d
    lea edx, [rdi + PORT_DONE]
    out dx, eax
halt:
    hlt
    jmp halt

MAP_GPA_RANGE_ROUTINE
