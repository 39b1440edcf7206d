package config

import (
	"errors"
	"fmt"
	"strings"
)

// CommandError says where a command line (a cmd: health check) cannot be
// split into words: Offset is the byte where the problem starts (the
// opening quote of an unterminated one, the trailing backslash), counted
// from 0; the message gives it as a 1-based column as editors do.
type CommandError struct {
	Offset int
	Reason string
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("%s at column %d", e.Reason, e.Offset+1)
}

// ErrEmptyCommand is returned for a command line with no words.
var ErrEmptyCommand = errors.New("empty command")

// SplitCommand splits a command line into words the way a POSIX shell does
// before it expands anything, and does nothing more: no variables, globs,
// tilde, redirections or command substitution, since the words go straight
// to exec (a check that needs a shell says so: sh -c '...').
//
//   - blanks (space, tab, newline) separate words;
//   - 'single quotes' keep everything up to the next single quote;
//   - "double quotes" keep everything, but a backslash before $ ` " \ or a
//     newline stands for that character (a newline is removed);
//   - outside quotes a backslash keeps the next character (a backslash and
//     newline are removed);
//   - quotes join the word they touch: a"b c"d is one word, and a pair
//     of quotes with nothing between is an empty word.
//
// An unterminated quote or a trailing backslash is a *CommandError naming
// where it starts; no words is ErrEmptyCommand.
func SplitCommand(s string) ([]string, error) {
	var (
		words  []string
		word   strings.Builder
		inWord bool // a word has started, even if empty ('' or "")
	)
	end := func() {
		if inWord {
			words = append(words, word.String())
		}
		word.Reset()
		inWord = false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case ' ', '\t', '\n':
			end()
		case '\\':
			if i+1 == len(s) {
				return nil, &CommandError{Offset: i, Reason: "backslash at the end of the command"}
			}
			i++
			if s[i] != '\n' { // backslash-newline joins lines
				word.WriteByte(s[i])
				inWord = true
			}
		case '\'':
			closing := strings.IndexByte(s[i+1:], '\'')
			if closing < 0 {
				return nil, &CommandError{Offset: i, Reason: "unterminated single quote"}
			}
			word.WriteString(s[i+1 : i+1+closing])
			inWord = true
			i += closing + 1
		case '"':
			next, err := doubleQuoted(s, i, &word)
			if err != nil {
				return nil, err
			}
			inWord = true
			i = next
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	end()
	if len(words) == 0 {
		return nil, ErrEmptyCommand
	}
	return words, nil
}

// doubleQuoted copies the double-quoted text that opens at s[open] into w
// and returns the index of its closing quote.
func doubleQuoted(s string, open int, w *strings.Builder) (int, error) {
	for i := open + 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return i, nil
		case '\\':
			if i+1 < len(s) && strings.IndexByte("$`\"\\\n", s[i+1]) >= 0 {
				i++
				if s[i] != '\n' {
					w.WriteByte(s[i])
				}
				continue
			}
			w.WriteByte(c) // any other backslash is itself
		default:
			w.WriteByte(c)
		}
	}
	return 0, &CommandError{Offset: open, Reason: "unterminated double quote"}
}

// QuoteCommand writes words back as a command line that SplitCommand reads
// as the same words: a word of only safe characters stays as it is, any
// other is single-quoted (a single quote inside becomes '\”).
func QuoteCommand(words []string) string {
	var b strings.Builder
	for i, w := range words {
		if i > 0 {
			b.WriteByte(' ')
		}
		if w != "" && strings.Trim(w, safeCommandChars) == "" {
			b.WriteString(w)
			continue
		}
		b.WriteByte('\'')
		b.WriteString(strings.ReplaceAll(w, "'", `'\''`))
		b.WriteByte('\'')
	}
	return b.String()
}

const safeCommandChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_"
