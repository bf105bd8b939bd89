//! A child's stdout and stderr, read without blocking on the task's own thread.
//!
//! `exec.run` waits for its child and reads both pipes in one `poll(2)` loop (see
//! `exec::run_process`): no reader thread per pipe. A command fanned out to a
//! thousand agents used to start and end two threads on each of them.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use sloth_lua::context::TaskIo;
use sloth_proto::protocol::LogLevel;

/// Most output kept per stream; the rest is read and dropped (`truncated = true`).
const MAX_OUTPUT: usize = 64 * 1024 * 1024;
/// A streamed line longer than this is forwarded in pieces.
const MAX_LINE: usize = 64 * 1024;
/// Most bytes taken from one pipe before the loop looks at the child and the task
/// again (a command that floods its output cannot starve the stop and the timeout).
const MAX_READ_TURN: usize = 1024 * 1024;

/// One output pipe of a child: what was read so far, and the line being streamed.
pub(crate) struct OutPipe {
    /// `None` once the pipe reached end of file (or was handed to [`abandon`]).
    fd: Option<OwnedFd>,
    kept: Vec<u8>,
    truncated: bool,
    /// Forward each line to the task's log at this level (`stream = true`).
    stream: Option<LogLevel>,
    partial: Vec<u8>,
}

impl OutPipe {
    /// Take `fd` (non-blocking from now on); `None` is a pipe that was never there.
    pub fn new(fd: Option<OwnedFd>, stream: Option<LogLevel>) -> io::Result<OutPipe> {
        if let Some(fd) = &fd {
            rustix::io::ioctl_fionbio(fd, true)?;
        }
        Ok(OutPipe {
            fd,
            kept: Vec::new(),
            truncated: false,
            stream,
            partial: Vec::new(),
        })
    }

    pub fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// Read what the pipe holds now (up to [`MAX_READ_TURN`]), into `chunk` first.
    /// What is kept counts against `keep_left` (shared by both pipes of a child).
    /// Returns the number of bytes read; end of file closes the pipe and forwards an
    /// unterminated last line.
    pub fn read_ready(
        &mut self,
        chunk: &mut [u8],
        io: &dyn TaskIo,
        keep_left: &mut usize,
    ) -> usize {
        let mut total = 0;
        while total < MAX_READ_TURN {
            let Some(fd) = &self.fd else { break };
            match rustix::io::read(fd, &mut *chunk) {
                Ok(0) => {
                    self.close(io);
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.take(&chunk[..n], io, keep_left);
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => break,
                // Anything else ends the pipe as end of file would.
                Err(_) => {
                    self.close(io);
                    break;
                }
            }
        }
        total
    }

    /// Keep `data` (within [`MAX_OUTPUT`] and `keep_left`) and stream its complete
    /// lines.
    fn take(&mut self, data: &[u8], io: &dyn TaskIo, keep_left: &mut usize) {
        let room = MAX_OUTPUT.saturating_sub(self.kept.len()).min(*keep_left);
        if room < data.len() {
            self.truncated = true;
        }
        let kept = room.min(data.len());
        self.kept.extend_from_slice(&data[..kept]);
        *keep_left -= kept;
        let Some(level) = self.stream else { return };
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() && pos <= MAX_LINE {
                emit(io, level, &rest[..pos]);
            } else {
                self.partial.extend_from_slice(&rest[..pos]);
                self.emit_pieces(io, level);
                emit(io, level, &self.partial);
                self.partial.clear();
            }
            rest = &rest[pos + 1..];
        }
        self.partial.extend_from_slice(rest);
        self.emit_pieces(io, level);
    }

    /// A line longer than [`MAX_LINE`] goes in pieces of at most `MAX_LINE` bytes, each
    /// cut before a character that would straddle it: none is clipped on the way.
    /// Leaves at most `MAX_LINE` bytes in `partial`.
    fn emit_pieces(&mut self, io: &dyn TaskIo, level: LogLevel) {
        while self.partial.len() > MAX_LINE {
            let cut = piece_end(&self.partial);
            // Not a line's end: a '\r' it ends with is the line's, and stays.
            io.log(level, &String::from_utf8_lossy(&self.partial[..cut]));
            self.partial.drain(..cut);
        }
    }

    fn close(&mut self, io: &dyn TaskIo) {
        self.fd = None;
        if let Some(level) = self.stream {
            if !self.partial.is_empty() {
                emit(io, level, &self.partial);
                self.partial.clear();
            }
        }
    }

    /// What was kept, and whether some was dropped past [`MAX_OUTPUT`].
    pub fn into_output(self) -> (Vec<u8>, bool) {
        (self.kept, self.truncated)
    }
}

/// Where the first piece of an over-long line ends: at [`MAX_LINE`], or up to 3 bytes
/// before it so that a UTF-8 character is not split.
fn piece_end(line: &[u8]) -> usize {
    let mut end = MAX_LINE.min(line.len());
    // A continuation byte (0b10xxxxxx) at the cut belongs to a character begun before.
    while end > MAX_LINE - 3 && end < line.len() && line[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    end
}

fn emit(io: &dyn TaskIo, level: LogLevel, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    io.log(level, &String::from_utf8_lossy(line));
}

/// Wait until one of `pipes` (the open ones) or `exit` (the child's pidfd) is
/// readable, or `max` passes. An interrupted wait just ends early.
pub(crate) fn wait_any(pipes: [&OutPipe; 2], exit: Option<&OwnedFd>, max: Duration) {
    let fds = pipes.into_iter().filter_map(|p| p.fd.as_ref()).chain(exit);
    let _ = wait_readable(fds, Some(max));
}

/// `poll(2)` for input on `fds`, at most `max` (none: until one is readable).
fn wait_readable<'a>(
    fds: impl Iterator<Item = &'a OwnedFd>,
    max: Option<Duration>,
) -> rustix::io::Result<usize> {
    let mut polled: Vec<PollFd<'_>> = fds.map(|fd| PollFd::new(fd, PollFlags::IN)).collect();
    // Bounded like poll(2)'s timeout (i32::MAX ms), never an endless wait.
    let timeout =
        max.and_then(|m| Timespec::try_from(m.min(Duration::from_millis(i32::MAX as u64))).ok());
    rustix::event::poll(&mut polled, timeout.as_ref())
}

/// Stop collecting from pipes a background grandchild still holds open: a thread
/// reads them to their end and drops what it reads, so that the grandchild never
/// meets a closed pipe (`SIGPIPE`). Its output belongs to no call any more.
pub(crate) fn abandon(pipes: [&mut OutPipe; 2]) {
    let fds: Vec<OwnedFd> = pipes.into_iter().filter_map(|p| p.fd.take()).collect();
    if fds.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("sloth-exec-drain".into())
        .spawn(move || {
            let mut chunk = vec![0u8; 8192];
            let mut open = fds;
            while !open.is_empty() {
                match wait_readable(open.iter(), None) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(_) => return,
                }
                open.retain(|fd| loop {
                    match rustix::io::read(fd.as_fd(), &mut chunk) {
                        Ok(0) => break false,
                        Ok(_) | Err(Errno::INTR) => continue,
                        Err(Errno::AGAIN) => break true,
                        Err(_) => break false,
                    }
                });
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use sloth_lua::shared_obj::{NoBackend, SharedBackend};
    use std::sync::Arc;

    #[derive(Default)]
    struct Lines(Mutex<Vec<(LogLevel, String)>>);

    impl TaskIo for Lines {
        fn log(&self, level: LogLevel, line: &str) {
            self.0.lock().push((level, line.to_string()));
        }
        fn change(&self, _: sloth_proto::change::Change) {}
        fn backend(&self) -> Arc<dyn SharedBackend> {
            Arc::new(NoBackend)
        }
    }

    /// `take` with no allowance beyond the pipe's own cap.
    fn feed(p: &mut OutPipe, data: &[u8], io: &dyn TaskIo) {
        let mut left = usize::MAX;
        p.take(data, io, &mut left);
    }

    fn pipe(stream: Option<LogLevel>) -> OutPipe {
        OutPipe::new(None, stream).expect("no fd to set up")
    }

    #[test]
    fn lines_are_streamed_whole_across_reads() {
        let io = Lines::default();
        let mut p = pipe(Some(LogLevel::Print));
        feed(&mut p, b"one\ntw", &io);
        feed(&mut p, b"o\r\nthr", &io);
        feed(&mut p, b"ee", &io);
        p.close(&io);
        let got: Vec<String> = io.0.lock().iter().map(|(_, l)| l.clone()).collect();
        assert_eq!(got, ["one", "two", "three"]);
        assert_eq!(p.into_output(), (b"one\ntwo\r\nthree".to_vec(), false));
    }

    #[test]
    fn a_line_past_the_limit_goes_in_pieces() {
        let io = Lines::default();
        let mut p = pipe(Some(LogLevel::Info));
        // Three and a half pieces' worth, in reads of odd sizes, then the line's end.
        let line: Vec<u8> = (0..MAX_LINE * 7 / 2)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        for part in line.chunks(16 * 1024 + 7) {
            feed(&mut p, part, &io);
        }
        feed(&mut p, b"\n", &io);
        let lines = io.0.lock();
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|(_, l)| l.len() <= MAX_LINE));
        let joined: String = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(joined.as_bytes(), &line[..], "nothing lost or added");
    }

    #[test]
    fn a_long_line_ending_in_the_same_read_also_goes_in_pieces() {
        for first_read in [0, 1000, MAX_LINE] {
            let io = Lines::default();
            let mut p = pipe(Some(LogLevel::Print));
            let mut line = vec![b'a'; 70_000];
            line.push(b'\n');
            feed(&mut p, &line[..first_read], &io);
            feed(&mut p, &line[first_read..], &io);
            let lines = io.0.lock();
            let lens: Vec<usize> = lines.iter().map(|(_, l)| l.len()).collect();
            assert_eq!(
                lens,
                [MAX_LINE, 70_000 - MAX_LINE],
                "first read {first_read}"
            );
        }
    }

    #[test]
    fn a_piece_ending_in_a_carriage_return_keeps_it() {
        let io = Lines::default();
        let mut p = pipe(Some(LogLevel::Print));
        let mut line = vec![b'a'; MAX_LINE - 1];
        line.push(b'\r');
        line.extend_from_slice(b"bc\r\n");
        feed(&mut p, &line, &io);
        let lines = io.0.lock();
        assert_eq!(lines[0].1.len(), MAX_LINE);
        assert!(lines[0].1.ends_with('\r'));
        assert_eq!(
            lines[1].1, "bc",
            "the line's own CRLF end is still taken off"
        );
    }

    #[test]
    fn a_piece_never_splits_a_character() {
        let io = Lines::default();
        let mut p = pipe(Some(LogLevel::Info));
        // "€" is 3 bytes: one starts 1 byte before the piece's limit.
        let mut line = vec![b'a'; MAX_LINE - 1];
        line.extend_from_slice("€€".as_bytes());
        feed(&mut p, &line, &io);
        feed(&mut p, b"\n", &io);
        let lines = io.0.lock();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].1, "a".repeat(MAX_LINE - 1));
        assert_eq!(lines[1].1, "€€");
    }

    #[test]
    fn output_past_the_cap_is_dropped_and_flagged() {
        let io = Lines::default();
        let mut p = pipe(None);
        let block = vec![b'x'; 8 * 1024 * 1024];
        for _ in 0..(MAX_OUTPUT / block.len()) {
            feed(&mut p, &block, &io);
        }
        feed(&mut p, b"more", &io);
        assert!(
            io.0.lock().is_empty(),
            "nothing streamed without stream = true"
        );
        let (kept, truncated) = p.into_output();
        assert_eq!(kept.len(), MAX_OUTPUT);
        assert!(truncated);
    }

    #[test]
    fn both_pipes_keep_no_more_than_their_shared_allowance() {
        let io = Lines::default();
        let (mut out, mut err) = (pipe(None), pipe(None));
        let mut left = 10;
        out.take(b"123456", &io, &mut left);
        err.take(b"abcdef", &io, &mut left);
        out.take(b"789", &io, &mut left);
        assert_eq!(left, 0);
        assert_eq!(out.into_output(), (b"123456".to_vec(), true));
        assert_eq!(err.into_output(), (b"abcd".to_vec(), true));
        // Within the allowance nothing is flagged.
        let mut p = pipe(None);
        let mut left = 3;
        p.take(b"abc", &io, &mut left);
        assert_eq!(p.into_output(), (b"abc".to_vec(), false));
    }
}
